"""Helpers shared by the benchmark scripts: the machine's description, resident-memory probes, small formatters."""
import ctypes
import gc
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    'machine_info', 'command_line', 'read_status_kb', 'reset_peak_rss', 'release_free_memory', 'MemoryProbe', 'fmt_num',
    'markdown_table', 'matmul_gflops', 'write_text_atomic', 'create_benchmark_model', 'SIZED_FAMILIES',
    'json_dumps_compact',
]

# timm families built for an input size: MaxxVit-style attention windows are fixed at construction, and
# Astroformer's relative-position kernels are laid out for it (they run at other sizes, resized)
SIZED_FAMILIES = ('coatnet', 'maxvit', 'maxxvit', 'astroformer')


def create_benchmark_model(name: str, num_classes: int, img_size: int, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(name, ...)``, built for ``img_size`` where the family takes one."""
    import timm
    if any(family in name for family in SIZED_FAMILIES):
        kwargs['img_size'] = img_size
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a run killed mid-write leaves the
    previous file (which ``--resume`` reads) intact, never a truncated one."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=path.parent)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would carry over to the result file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def json_dumps_compact(obj: Any, indent: int = 1) -> str:
    """``json.dumps(obj, indent=indent)``, except that a list or dict holding only numbers, strings, booleans or
    None goes on one line: per-image predictions (thousands of small ints) and history entries stay readable and
    small instead of taking a line per value."""
    import json
    import uuid
    inline: List[str] = []
    nonce = uuid.uuid4().hex  # so that no string of the data can pass for a marker

    def flat(value: Any) -> bool:
        return value is None or isinstance(value, (bool, int, float, str))

    def mark(value: Any) -> Any:
        if isinstance(value, (list, tuple, dict)):
            values = value.values() if isinstance(value, dict) else value
            if values and all(flat(v) for v in values):
                inline.append(json.dumps(value, separators=(',', ':') if not isinstance(value, dict) else (', ', ': ')))
                return f'\0{nonce}:{len(inline) - 1}\0'
            if isinstance(value, dict):
                return {k: mark(v) for k, v in value.items()}
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(obj), indent=indent)
    return re.sub(rf'"\\u0000{nonce}:(\d+)\\u0000"', lambda m: inline[int(m.group(1))], text)


def command_line(placeholders: Optional[Mapping[Any, str]] = None) -> str:
    """The command that started this process, as a user would retype it. ``placeholders`` maps folders of this
    machine to the names a report gives them (``{args.data_dir: 'DATA_DIR'}``): an argument that is one of them, or
    lies under one, is written with the name instead, so that no report names a path of the machine it ran on."""
    folders = sorted(((os.path.normpath(str(path)), name) for path, name in (placeholders or {}).items()),
                     key=lambda item: -len(item[0]))

    def named(arg: str) -> str:
        for folder, name in folders:
            if os.path.normpath(arg) == folder:
                return name
            if arg.startswith(folder + os.sep):
                return name + arg[len(folder):]
        return arg

    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    return ' '.join(shlex.quote(a) for a in ['python', script, *map(named, sys.argv[1:])])


def _lscpu_field(name: str) -> Optional[str]:
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(rf'^{re.escape(name)}:\s*(.+)$', out, flags=re.M)
    return match.group(1).strip() if match else None


def _cpu_flags(wanted: Sequence[str] = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')) -> List[str]:
    try:
        with open('/proc/cpuinfo') as f:
            flags = set(re.search(r'^flags\s*:\s*(.*)$', f.read(), flags=re.M).group(1).split())
    except (OSError, AttributeError):
        return []
    return [flag for flag in wanted if flag in flags]


def matmul_gflops(dtype: torch.dtype, size: int = 512, min_time: float = 0.3, device: str = 'cpu') -> float:
    """Dense matmul speed right now (a contention gauge: compare fp32 with bf16, and with other runs)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return 2 * size ** 3 * count / elapsed / 1e9


def machine_info(device: str = 'cpu') -> Dict[str, Any]:
    """What the numbers were measured on: CPU model and flags, cores, memory, library versions, load."""
    import timm
    import timm_astro
    info: Dict[str, Any] = {
        'cpu_model': _lscpu_field('Model name') or platform.processor(),
        'cpu_flags': _cpu_flags(),
        'torch_cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'logical_cpus': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'mem_total_gb': round(read_status_kb('MemTotal', '/proc/meminfo') / 2 ** 20, 1),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_astro': timm_astro.__version__,
        'platform': platform.platform(),
        'loadavg_start': os.getloadavg() if hasattr(os, 'getloadavg') else None,
        'device': device,
    }
    if device.startswith('cuda') and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def read_status_kb(field: str, path: str = '/proc/self/status') -> int:
    """A ``kB`` field of a /proc status file (VmRSS, VmHWM, MemTotal, MemAvailable), 0 if unavailable."""
    try:
        with open(path) as f:
            match = re.search(rf'^{field}:\s+(\d+)\s*kB', f.read(), flags=re.M)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (VmHWM) to its current RSS; False where unsupported."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return True


_LIBC = None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``) so RSS baselines hold no stale activations."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL('libc.so.6')
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


class MemoryProbe:
    """Peak memory of a block of work above the memory right before it (CPU: VmRSS/VmHWM; CUDA: allocated)."""

    def __init__(self, device: torch.device):
        self.device, self.cuda, self.baseline_kb = device, device.type == 'cuda', 0
        self.method = 'torch.cuda.max_memory_allocated' if self.cuda else (
            'VmHWM after /proc/self/clear_refs, malloc_trim first' if reset_peak_rss() else 'none')

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_kb = torch.cuda.memory_allocated(self.device) // 1024
        else:
            release_free_memory()
            self.baseline_kb = read_status_kb('VmRSS')
            reset_peak_rss()

    def stop(self) -> Tuple[float, float]:
        """(increment over the baseline, peak total), MB."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak_kb = torch.cuda.max_memory_allocated(self.device) // 1024
        else:
            peak_kb = read_status_kb('VmHWM') if self.method != 'none' else self.baseline_kb
        return (peak_kb - self.baseline_kb) / 1024, peak_kb / 1024


def fmt_num(value: Optional[float], digits: int = 2) -> str:
    """A number for a table, with enough significant digits for small and large values alike."""
    if value is None:
        return '—'
    if value == 0:
        return '0'
    magnitude = abs(value)
    if magnitude >= 100:
        return f'{value:,.0f}'
    if magnitude >= 10:
        return f'{value:.1f}'
    return f'{value:.{digits}f}' if magnitude >= 0.01 else f'{value:.2g}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'
