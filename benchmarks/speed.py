#!/usr/bin/env python3
"""Speed and memory of the Astroformer models against the alternatives, measured side by side in one run.

Absolute times drift on a shared machine; ratios measured together hold. So rows that are compared run in one
subprocess and take turns: after a warm-up, timed repeat 1 of every row, then repeat 2 of every row, and so on, for
inference (``inference_mode``) and for a training step (forward + cross-entropy + backward + AdamW step). Each timed
repeat also reports its peak resident memory above the resident memory right before it (VmHWM after resetting it
through /proc/self/clear_refs, with freed heap handed back to the OS first; CUDA: ``max_memory_allocated``).
``--isolate`` runs every row in a process of its own instead (memory check, process totals).

Rows (``--models`` selects them by key, shell-style patterns):

* ``astroformer_{small,base,large}/{fused,explicit,biasfree,table,freekernel}``: the resolution-preserving family at
  32x32, as shipped (fused attention, Fourier bias folded into q/k); the same weights with attention computed
  explicitly (the full N x N matrix); without relative bias (the fused ceiling at the same shape); with a learned
  table given to the fused kernel as a 4-D mask; with the attention kernel replaced by its values (a free kernel:
  the most any attention implementation can gain over ``explicit`` on this machine). Baseline: ``explicit``.
* ``plain_design_block``: astroformer_base whose S4 is the design document's block written plainly
  (``baselines.PlainRelativeAttention``). Baseline: ``astroformer_base/explicit``.
* ``attention/...``: S4's attention module of astroformer_base alone (``[B, 256, 32, 32]``, 8 heads), the same
  variants plus ``freqs0`` (``rel_pos_freqs=0`` exactly as shipped) and ``table-contiguous``.
* ``astroformer_{0..3}`` at 224 against ``maxxvit:astroformer_N``, timm's MaxxVit with the official layout, and
  ``astroformer_0/contiguous`` (q, k, v made contiguous before the fused kernel, as MaxxVit does).
* peers: ``resnet18@32``, ``coatnet_0_rw_224@32`` (baseline ``astroformer_base/fused``); ``resnet50``,
  ``convnext_tiny``, ``coatnet_0_rw_224``, ``maxvit_tiny_tf_224`` at 224 (baseline ``astroformer_0``).

Examples::

    python benchmarks/speed.py                        # every row, CPU fp32 + bf16
    python benchmarks/speed.py --quick                # small batches, a subset, fp32: a few minutes
    python benchmarks/speed.py --models 'astroformer_base/*' plain_design_block --dtypes fp32
    python benchmarks/speed.py --device cuda --compile --batch-size 256 --batch-size-224 64 --dtypes bf16

Writes ``<out-dir>/<name>.json`` (every timed repeat), ``<name>.md`` (targets and tables) and ``<name>.png``
(throughput against parameters).
"""
import argparse
import fnmatch
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchutils import (  # noqa: E402
    command_line, fmt_num, machine_info, markdown_table, matmul_gflops, read_status_kb, release_free_memory,
    reset_peak_rss, write_text_atomic,
)

NUM_CLASSES = 10
FULLRES_MODELS = ('astroformer_small', 'astroformer_base', 'astroformer_large')
FULLRES_WIDTH = {'astroformer_small': 256, 'astroformer_base': 256, 'astroformer_large': 864}  # S4 channels
PAPER_MODELS = ('astroformer_0', 'astroformer_1', 'astroformer_2', 'astroformer_3')
PEERS_32 = ('resnet18', 'coatnet_0_rw_224')
PEERS_224 = ('resnet50', 'convnext_tiny', 'coatnet_0_rw_224', 'maxvit_tiny_tf_224')
# Rows that also run in bf16 when this machine's bf16 is slow (no native bf16 matmul): the key comparisons.
BF16_KEY_ROWS = (
    'astroformer_base/fused', 'astroformer_base/explicit', 'plain_design_block', 'astroformer_0',
    'maxxvit:astroformer_0',
)
ATTENTION_DIM = 256  # astroformer_base's S4 width
MATMUL_PROBE_SIZE = 512  # square matmul timed at the start: a gauge of contention and of bf16 support
ATTENTION_HEAD_DIM = 32

# variant -> (model kwargs, fused attention, benchmark-side patch, description)
VARIANTS = {
    'fused': ({}, True, None, 'as shipped: fused SDPA, Fourier bias folded into q/k, no mask'),
    'explicit': ({}, False, None,
                 'same weights, softmax(q.(k+r)/sqrt(d) + W) @ v with the N x N matrix materialised'),
    'biasfree': ({'rel_pos_freqs': 0}, True, 'contiguous',
                 'no relative bias (rel_pos_freqs=0, q/k/v contiguous): the fused ceiling at the same shape'),
    'table': ({'rel_pos_type': 'table'}, True, None,
              'as shipped with rel_pos_type="table": learned table as a 4-D mask requiring grad'),
    'freekernel': ({}, True, 'freekernel',
                   'as shipped with the attention kernel replaced by its values (a kernel that costs nothing; every '
                   'other op kept): the bound on the speed-up any attention kernel can give'),
}
ATTENTION_EXTRA_VARIANTS = {
    'freqs0': ({'rel_pos_freqs': 0}, True, None, 'rel_pos_freqs=0 exactly as shipped (no patch)'),
    'table-contiguous': ({'rel_pos_type': 'table'}, True, 'contiguous',
                         'table mask with q/k/v made contiguous before the fused kernel'),
}


@dataclass
class Row:
    """One benchmarked configuration."""
    key: str
    group: str  # table section: 'fullres', 'attention', 'paper', 'peers'
    process: str  # rows with the same process id run (interleaved) in one subprocess
    kind: str  # 'timm' (timm.create_model), 'maxxvit' (official layout), 'plain' (design block), 'module'
    model: str
    img_size: int
    batch_size: int
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    fused: Optional[bool] = None  # None: the model's default attention implementation
    patch: Optional[str] = None  # 'contiguous' or 'freekernel': a benchmark-side patch from baselines.py
    baseline: Optional[str] = None
    description: str = ''


def parse_overrides(items: List[str]) -> Dict[str, int]:
    """``['astroformer_large=16']`` -> ``{'astroformer_large': 16}``."""
    overrides = {}
    for item in items:
        name, _, value = item.partition('=')
        if not value:
            raise SystemExit(f'--batch-override expects MODEL=BATCH, got {item!r}')
        overrides[name] = int(value)
    return overrides


def build_rows(args: argparse.Namespace) -> List[Row]:
    """Every row of the suite; rows compared with each other share a process."""
    overrides = parse_overrides(args.batch_override)
    rows: List[Row] = []
    for name in args.fullres_models:
        batch = overrides.get(name, args.batch_size)
        for variant, (kwargs, fused, patch, description) in VARIANTS.items():
            rows.append(Row(
                f'{name}/{variant}', 'fullres', name, 'timm', name, 32, batch, dict(kwargs), fused, patch,
                baseline=f'{name}/explicit', description=description))
        if name == 'astroformer_base':
            rows.append(Row(
                'plain_design_block', 'fullres', name, 'plain', name, 32, batch, baseline='astroformer_base/explicit',
                description='astroformer_base with S4 = the design document block written plainly (1 head, no '
                            'scaling, norm, MLP or projection; both N x N weight matrices materialised)'))
            for peer in args.peers_32:  # peers share the baseline's process
                kwargs = {'img_size': 32} if any(k in peer for k in ('coatnet', 'maxvit', 'maxxvit')) else {}
                rows.append(Row(
                    f'{peer}@32', 'peers', name, 'timm', peer, 32, overrides.get(f'{peer}@32', args.batch_size),
                    kwargs, baseline='astroformer_base/fused', description='timm peer at 32x32'))
    batch = overrides.get('attention', args.batch_size)
    for variant, (kwargs, fused, patch, description) in {**VARIANTS, **ATTENTION_EXTRA_VARIANTS}.items():
        rows.append(Row(
            f'attention/{variant}', 'attention', 'attention', 'module', 'RelativeAttention2d', 32, batch,
            dict(kwargs), fused, patch, baseline='attention/explicit',
            description=f"astroformer_base's S4 attention alone: {description}"))
    for name in args.paper_models:
        batch = overrides.get(name, args.batch_size_224)
        rows.append(Row(
            name, 'paper', name, 'timm', name, 224, batch, baseline=f'maxxvit:{name}',
            description='ours: MaxxVit C-C-C-T with runtime-size relative attention, as shipped'))
        if name == PAPER_MODELS[0]:
            rows.append(Row(
                f'{name}/contiguous', 'paper', name, 'timm', name, 224, batch, patch='contiguous',
                baseline=f'maxxvit:{name}', description='ours with q/k/v made contiguous before the fused kernel'))
        rows.append(Row(
            f'maxxvit:{name}', 'paper', name, 'maxxvit', name, 224, batch, baseline=f'maxxvit:{name}',
            description="timm's MaxxVit with the official layout (built for 224, runs only there)"))
        if name == PAPER_MODELS[0]:
            for peer in args.peers_224:
                rows.append(Row(
                    peer, 'peers', name, 'timm', peer, 224, overrides.get(peer, args.batch_size_224),
                    baseline=name, description='timm peer at its default 224x224'))
    if PAPER_MODELS[0] not in args.paper_models:
        for peer in args.peers_224:
            rows.append(Row(peer, 'peers', 'peers224', 'timm', peer, 224, overrides.get(peer, args.batch_size_224),
                            baseline=PAPER_MODELS[0], description='timm peer at its default 224x224'))
    return rows


def select_rows(rows: List[Row], patterns: Optional[List[str]]) -> List[Row]:
    if not patterns:
        return rows
    chosen = [row for row in rows if any(fnmatch.fnmatchcase(row.key, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f'--models {patterns} matches no row; rows are: {", ".join(r.key for r in rows)}')
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# Worker: the rows of one process.

def build_module(row: Row, device: torch.device) -> Tuple[nn.Module, Tuple[int, ...]]:
    """The model (or attention module) of a row and its input shape."""
    import timm
    import timm_astro  # noqa: F401
    from baselines import (
        contiguous_attention_inputs, free_attention_kernel, official_maxxvit, plain_design_model, set_attention_impl,
    )
    from timm_astro.layers import RelativeAttention2d

    if row.kind == 'module':
        kwargs = dict(rel_pos_type='fourier', rel_pos_freqs=4, key_context_kernel=3, window_size=(32, 32))
        kwargs.update(row.model_kwargs)
        model = RelativeAttention2d(ATTENTION_DIM, dim_head=ATTENTION_HEAD_DIM, **kwargs)
        shape = (row.batch_size, ATTENTION_DIM, row.img_size, row.img_size)
    else:
        if row.kind == 'maxxvit':
            model = official_maxxvit(row.model, num_classes=NUM_CLASSES, img_size=row.img_size)
        elif row.kind == 'plain':
            model = plain_design_model(num_classes=NUM_CLASSES)
        else:
            model = timm.create_model(row.model, num_classes=NUM_CLASSES, **row.model_kwargs)
        shape = (row.batch_size, 3, row.img_size, row.img_size)
    if row.fused is not None and not set_attention_impl(model, row.fused):
        raise RuntimeError(f'{row.key}: no attention module to switch to fused={row.fused}')
    patches = {'contiguous': contiguous_attention_inputs, 'freekernel': free_attention_kernel}
    if row.patch and not patches[row.patch](model):
        raise RuntimeError(f'{row.key}: no RelativeAttention2d to patch')
    return model.to(device), shape


def count_gflops(model: nn.Module, shape: Tuple[int, ...], device: torch.device) -> Optional[float]:
    """Forward GFLOPs per sample with attention computed explicitly (torch's counter skips the fused CPU kernel)."""
    from torch.utils.flop_counter import FlopCounterMode
    from baselines import set_attention_impl
    states = [(m, m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')]
    set_attention_impl(model, False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, *shape[1:], device=device))
        return counter.get_total_flops() / 1e9
    except Exception:  # a gap in the counter must not cost the timing
        return None
    finally:
        for module, state in states:
            module.fused_attn = state
        model.train(was_training)


class MemoryProbe:
    """Peak memory of a block of work above the resident memory right before it (CPU: VmRSS/VmHWM)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == 'cuda'
        if self.cuda:
            self.method = 'torch.cuda.max_memory_allocated'
        else:
            self.method = 'VmHWM after /proc/self/clear_refs, malloc_trim first' if reset_peak_rss() else 'none'
        self.baseline_kb = 0

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


@dataclass
class Unit:
    """A row in one dtype, with its step functions once built."""
    row: Row
    dtype: str
    infer: Optional[Callable[[], None]] = None
    train: Optional[Callable[[], None]] = None
    result: Dict[str, Any] = field(default_factory=dict)
    steps: Dict[str, int] = field(default_factory=dict)


def prepare_unit(unit: Unit, spec: Dict[str, Any], device: torch.device) -> None:
    """Build the model, input, optimizer and the two step functions of a unit."""
    from timm.optim import create_optimizer_v2

    row = unit.row
    torch.manual_seed(0)
    model, shape = build_module(row, device)
    unit.result['params'] = sum(p.numel() for p in model.parameters())
    unit.result['gflops'] = count_gflops(model, shape, device) if spec['flops'] else None
    memory_format = torch.channels_last if spec['channels_last'] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, NUM_CLASSES, (shape[0],), device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if unit.dtype == 'bf16' else nullcontext
    runner = torch.compile(model) if spec['compile'] else model
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-4, weight_decay=0.05)

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            runner(x)

    def train_step() -> None:
        model.train()
        with autocast():
            out = runner(x)
            loss = out.float().square().mean() if row.kind == 'module' else F.cross_entropy(out.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    unit.infer, unit.train = infer_step, train_step


def timed_repeat(
        unit: Unit,
        phase: str,
        probe: MemoryProbe,
        sync: Callable[[], None],
        min_util: float,
        spec: Dict[str, Any],
) -> None:
    """One timed repeat of a unit's phase, retried (after a pause) while the process got less CPU than asked.

    CPU time per wall second below ``min_util`` means another process held a core for part of the repeat; with
    OpenMP threads waiting on a descheduled peer that can slow a step many times over. Discarded attempts are kept
    in the record; if every retry is contended the last attempt is kept and flagged.
    """
    step, record = getattr(unit, phase), unit.result[phase]
    for attempt in range(spec['max_retries'] + 1):
        probe.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(unit.steps[phase]):
            step()
        sync()
        wall = time.perf_counter() - wall0
        util = (time.process_time() - cpu0) / wall
        inc, peak = probe.stop()
        contended = util < min_util
        if not contended or attempt == spec['max_retries']:
            break
        record['discarded'].append({'seconds': wall / unit.steps[phase], 'cpu_util': util})
        time.sleep(spec['retry_wait'])
    record['seconds'].append(wall / unit.steps[phase])
    record['mem_inc_mb'].append(inc)
    record['mem_peak_mb'].append(peak)
    record['cpu_util'].append(util)
    record['contended'].append(contended)


def run_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure the units of one process: inference, then training, timed repeats taking turns across units."""
    device = torch.device(spec['device'])
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    probe = MemoryProbe(device)
    units = [Unit(Row(**u['row']), u['dtype']) for u in spec['units']]
    live = []
    for unit in units:
        try:
            prepare_unit(unit, spec, device)
            live.append(unit)
        except Exception as e:  # report and carry on with the other rows
            unit.result['error'] = f'build failed: {type(e).__name__}: {e}'[:400]
    gc.collect()
    release_free_memory()
    rss_idle_mb = read_status_kb('VmRSS') / 1024
    warmup = max(spec['warmup'], 2) if spec['compile'] else spec['warmup']
    # A repeat counts only if this process got the CPU it asked for; on a shared machine the others are retried.
    min_util = spec['min_cpu_util'] * torch.get_num_threads() if device.type == 'cpu' else 0.

    for phase in ('infer', 'train'):
        for unit in list(live):
            step = getattr(unit, phase)
            try:
                last = 0.
                for _ in range(warmup):
                    start = time.perf_counter()
                    step()
                    sync()
                    last = time.perf_counter() - start
            except Exception as e:
                unit.result['error'] = f'{phase} failed: {type(e).__name__}: {e}'[:400]
                live.remove(unit)
                continue
            unit.steps[phase] = max(1, math.ceil(spec['min_repeat_time'] / last)) if last > 0 else 1
            unit.result[phase] = {'steps_per_repeat': unit.steps[phase], 'seconds': [], 'mem_inc_mb': [],
                                  'mem_peak_mb': [], 'cpu_util': [], 'contended': [], 'discarded': []}
        for _ in range(spec['repeats']):
            for unit in list(live):
                try:
                    timed_repeat(unit, phase, probe, sync, min_util, spec)
                except Exception as e:
                    unit.result['error'] = f'{phase} failed: {type(e).__name__}: {e}'[:400]
                    live.remove(unit)
    return {
        'units': [dict(u.result, key=u.row.key, dtype=u.dtype, batch_size=u.row.batch_size) for u in units],
        'rss_idle_mb': rss_idle_mb, 'memory_method': probe.method, 'threads': torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Orchestration, aggregation, output.

def attention_bytes_estimate(row: Row) -> int:
    """Rough peak bytes of a materialised N x N attention (explicit, mask, or math fallback), 0 when fused."""
    if row.group not in ('fullres', 'attention'):
        return 0
    if row.kind == 'plain':
        heads, matrices = 1, 6
    else:
        if row.fused and row.model_kwargs.get('rel_pos_type') != 'table' and row.model_kwargs.get(
                'rel_pos_freqs', 4) != 0:
            return 0
        heads, matrices = FULLRES_WIDTH.get(row.model, ATTENTION_DIM) // ATTENTION_HEAD_DIM, 4
    n = row.img_size ** 2
    return matrices * row.batch_size * heads * n * n * 4


def run_process(units: List[Tuple[Row, str]], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Run units in one fresh subprocess; failures become ``error`` entries, never exceptions."""
    available = read_status_kb('MemAvailable', '/proc/meminfo') * 1024
    results, runnable = [], []
    for row, dtype in units:
        needed = attention_bytes_estimate(row)
        if args.device == 'cpu' and needed and available and needed > 0.8 * available:
            results.append({'key': row.key, 'dtype': dtype, 'batch_size': row.batch_size,
                            'error': f'skipped: N x N attention needs ~{needed / 2 ** 30:.1f} GB, '
                                     f'{available / 2 ** 30:.1f} GB available'})
        else:
            runnable.append((row, dtype))
    if not runnable:
        return results
    spec = {
        'units': [{'row': asdict(row), 'dtype': dtype} for row, dtype in runnable], 'device': args.device,
        'warmup': args.warmup, 'repeats': args.repeats, 'min_repeat_time': args.min_repeat_time,
        'compile': args.compile, 'channels_last': args.channels_last, 'flops': not args.no_flops,
        'threads': args.threads, 'min_cpu_util': args.min_cpu_util, 'max_retries': args.max_retries,
        'retry_wait': args.retry_wait,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / 'result.json'
        cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', json.dumps(spec), '--worker-out',
               str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout * len(runnable))
            failure = None if proc.returncode == 0 and out_path.exists() else (
                ('killed (out of memory?)' if proc.returncode in (-9, 137) else f'exit {proc.returncode}') + ': '
                + ' / '.join((proc.stderr or '').strip().splitlines()[-3:]))
        except subprocess.TimeoutExpired:
            failure = f'timed out after {args.row_timeout * len(runnable):.0f} s'
        if failure is None:
            worker = json.loads(out_path.read_text())
            for unit in worker['units']:
                unit.update(rss_idle_mb=worker['rss_idle_mb'], memory_method=worker['memory_method'],
                            threads=worker['threads'])
            return results + worker['units']
    if len(runnable) > 1:  # one row took the process down: run each alone so the others still get measured
        for row, dtype in runnable:
            results += run_process([(row, dtype)], args)
        return results
    row, dtype = runnable[0]
    return results + [{'key': row.key, 'dtype': dtype, 'batch_size': row.batch_size, 'error': failure}]


def summarize_phase(phase: Dict[str, Any], batch: int) -> Dict[str, Any]:
    """Median throughput and its spread (min-max over repeats), median and max memory."""
    seconds = phase['seconds']
    return {
        'img_s': batch / statistics.median(seconds),
        'img_s_min': batch / max(seconds),
        'img_s_max': batch / min(seconds),
        'repeats': len(seconds),
        'steps_per_repeat': phase['steps_per_repeat'],
        'mem_inc_mb': statistics.median(phase['mem_inc_mb']),
        'mem_inc_mb_range': (min(phase['mem_inc_mb']), max(phase['mem_inc_mb'])),
        'mem_peak_mb': max(phase['mem_peak_mb']),
        'cpu_util': statistics.median(phase['cpu_util']),
        'contended': sum(phase.get('contended', [])),  # kept repeats that never got their CPU share
        'discarded': len(phase.get('discarded', [])),  # contended attempts that were retried
    }


def aggregate(rows: List[Row], runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One summary per (row, dtype): repeats of all rounds pooled, ratios against the row's baseline."""
    order = {row.key: i for i, row in enumerate(rows)}
    by_key = {row.key: row for row in rows}
    pooled: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: order.get(r['key'], len(order))):
        row = by_key.get(run['key'])
        if row is None:
            continue
        entry = pooled.setdefault((row.key, run['dtype']), {
            'key': row.key, 'group': row.group, 'dtype': run['dtype'], 'batch_size': run['batch_size'],
            'img_size': row.img_size, 'baseline': row.baseline, 'description': row.description, 'params': None,
            'gflops': None, 'rss_idle_mb': None, 'errors': [], '_phases': {}})
        if 'error' in run:
            entry['errors'].append(run['error'])
        entry['params'] = run.get('params', entry['params'])
        entry['gflops'] = run.get('gflops', entry['gflops'])
        entry['rss_idle_mb'] = run.get('rss_idle_mb', entry['rss_idle_mb'])
        for phase in ('infer', 'train'):
            if run.get(phase) and run[phase]['seconds']:
                acc = entry['_phases'].setdefault(phase, {'seconds': [], 'mem_inc_mb': [], 'mem_peak_mb': [],
                                                          'cpu_util': [], 'contended': [], 'discarded': [],
                                                          'steps_per_repeat': 0})
                for k in ('seconds', 'mem_inc_mb', 'mem_peak_mb', 'cpu_util', 'contended', 'discarded'):
                    acc[k] += run[phase].get(k, [])
                acc['steps_per_repeat'] = run[phase]['steps_per_repeat']
    summaries = []
    for entry in pooled.values():
        phases = entry.pop('_phases')
        for phase in ('infer', 'train'):
            entry[phase] = summarize_phase(phases[phase], entry['batch_size']) if phase in phases else None
        summaries.append(entry)
    index = {(s['key'], s['dtype']): s for s in summaries}
    for s in summaries:
        s['vs_baseline'] = ratios(s, index.get((s['baseline'], s['dtype'])))
    return summaries


def ratios(entry: Dict[str, Any], base: Optional[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Throughput ratios (this / baseline; > 1 is faster) and the training memory ratio (< 1 uses less)."""
    empty = {'infer': None, 'train': None, 'train_mem': None}
    if not base or base['batch_size'] != entry['batch_size']:
        return empty

    def get(e: Dict[str, Any], phase: str, key: str) -> Optional[float]:
        return (e.get(phase) or {}).get(key)

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    return {
        'infer': ratio(get(entry, 'infer', 'img_s'), get(base, 'infer', 'img_s')),
        'train': ratio(get(entry, 'train', 'img_s'), get(base, 'train', 'img_s')),
        'train_mem': ratio(get(entry, 'train', 'mem_inc_mb'), get(base, 'train', 'mem_inc_mb')),
    }


def verdict(check: Dict[str, Any]) -> str:
    """'met', 'missed', or 'within noise' when the median misses the limit but the ratio's range (worst to best
    repeat) reaches it: the repeats cannot tell the two rows apart at that limit. '' for rows without a limit."""
    if check['met'] is None:
        return ''
    if check['met']:
        return 'met'
    best = check['range'] and (max(check['range']) if check['higher_is_better'] else min(check['range']))
    if best and (best >= check['limit'] if check['higher_is_better'] else best <= check['limit']):
        return 'within noise'
    return 'missed'


def check_targets(summaries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's targets, wherever the rows involved were measured."""
    index = {(s['key'], s['dtype']): s for s in summaries}
    checks = []

    def add(target: str, dtype: str, a_key: str, b_key: str, phase: str, metric: str, limit: Optional[float],
            higher_is_better: bool) -> None:
        a, b = index.get((a_key, dtype)), index.get((b_key, dtype))
        if not a or not b or not a.get(phase) or not b.get(phase) or a['batch_size'] != b['batch_size']:
            return
        value = a[phase][metric] / b[phase][metric] if b[phase][metric] else None
        spread = None
        if metric == 'img_s':  # the ratio's range from the spreads: worst case to best case
            spread = (a[phase]['img_s_min'] / b[phase]['img_s_max'], a[phase]['img_s_max'] / b[phase]['img_s_min'])
        met = None if value is None or limit is None else (value >= limit if higher_is_better else value <= limit)
        checks.append({'target': target, 'dtype': dtype, 'batch_size': a['batch_size'], 'row': a_key,
                       'against': b_key, 'value': value, 'range': spread, 'limit': limit,
                       'higher_is_better': higher_is_better, 'met': met})

    for dtype in sorted({s['dtype'] for s in summaries}, key=lambda d: d != 'fp32'):
        for name in FULLRES_MODELS:
            add('train throughput >= 2x explicit', dtype, f'{name}/fused', f'{name}/explicit', 'train', 'img_s',
                2.0, True)
            add('train peak memory <= 1/3 of explicit', dtype, f'{name}/fused', f'{name}/explicit', 'train',
                'mem_inc_mb', 1 / 3, False)
            add('train throughput bound: attention kernel free / explicit', dtype, f'{name}/freekernel',
                f'{name}/explicit', 'train', 'img_s', None, True)
        for phase in ('train', 'infer'):
            add(f'{phase} throughput vs plain design block', dtype, 'astroformer_base/fused', 'plain_design_block',
                phase, 'img_s', None, True)
        add('train peak memory vs plain design block', dtype, 'astroformer_base/fused', 'plain_design_block',
            'train', 'mem_inc_mb', None, False)
        for name in FULLRES_MODELS + ('attention',):
            for phase in ('train', 'infer'):
                add(f'bias-free / ours throughput <= 1.2 ({phase})', dtype, f'{name}/biasfree', f'{name}/fused',
                    phase, 'img_s', 1.2, False)
        for name in PAPER_MODELS:
            for phase in ('train', 'infer'):
                add(f'{phase} throughput >= 1.0x MaxxVit layout', dtype, name, f'maxxvit:{name}', phase, 'img_s',
                    1.0, True)
            if name == PAPER_MODELS[0]:
                for phase in ('train', 'infer'):
                    add(f'{phase} throughput vs MaxxVit layout, q/k/v contiguous', dtype, f'{name}/contiguous',
                        f'maxxvit:{name}', phase, 'img_s', None, True)
    return checks


def cpu_cell(infer: Dict[str, Any], train: Dict[str, Any]) -> str:
    """Median CPU util of the training repeats, and how many repeats were retried or stayed contended."""
    text = f"{train['cpu_util']:.2f}"
    retried = infer.get('discarded', 0) + train.get('discarded', 0)
    contended = infer.get('contended', 0) + train.get('contended', 0)
    notes = ([f'{retried} retried'] if retried else []) + ([f'**{contended} contended**'] if contended else [])
    return text + (f" ({', '.join(notes)})" if notes else '')


def render_markdown(report: Dict[str, Any]) -> str:
    """Targets, then one table per section and dtype, then what each row is."""
    m, settings = report['machine'], report['settings']
    lines = [
        f"# Speed and memory ({m['device']})\n",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({settings.get('threads') or m['torch_threads']} "
        f"torch threads per row), "
        f"{m['mem_total_gb']} GB RAM, torch CPU capability {m['torch_cpu_capability']} (flags: "
        f"{', '.join(m['cpu_flags']) or 'none'}); torch {m['torch']}, timm {m['timm']}, timm-astro {m['timm_astro']}, "
        f"Python {m['python']}." + (f" GPU: {m['gpu']}." if m.get('gpu') else '') + '\n',
        f"{m.get('matmul_size', 1024)}^3 matmul at the start: fp32 {fmt_num(m['matmul_gflops_fp32'])} GFLOP/s, "
        f"bf16 {fmt_num(m['matmul_gflops_bf16'])} GFLOP/s. Load average at the start "
        f"{', '.join(f'{v:.1f}' for v in m['loadavg_start'] or [])}; at the end "
        f"{', '.join(f'{v:.1f}' for v in m.get('loadavg_end') or [])}.\n",
        f"Command: `{report['command']}` ({report['wall_time_s'] / 60:.1f} min, started {report['date']}).\n",
        f"Warm-up {settings['warmup']} step per phase, then {settings['repeats']} timed repeats x {settings['rounds']} "
        f"round(s), each repeat lasting >= {settings['min_repeat_time']} s; rows of one section take turns repeat by "
        f"repeat in one process{' (isolated: one process per row)' if settings['isolate'] else ''}. bf16 rows: "
        f"{settings['bf16_rows']}; compile {settings['compile']}; channels_last {settings['channels_last']}.\n",
        "Throughput: median (min-max) over repeats, images/s. Train memory: peak resident memory during a training "
        "step above the resident memory right before it (median over repeats, MB). x base: this row / its "
        "baseline row (same dtype and batch). CPU util: process CPU seconds per wall second during the training "
        f"repeats (2.0 = both cores). A repeat during which the process got less than {settings['min_cpu_util']:.0%} "
        f"of its threads' CPU time (another process held a core) was retried after {settings['retry_wait']:.0f} s, up "
        f"to {settings['max_retries']} times; 'retried' counts those attempts (not used), 'contended' the repeats "
        "kept although every retry was contended.\n",
        '## Targets\n',
        "Ratio: median row / median baseline; range: worst repeat against best and best against worst. 'within "
        "noise': the median misses the limit but the range reaches it, so the repeats cannot tell the rows apart "
        "there.\n",
    ]
    rows = []
    for c in report['targets']:
        value = fmt_num(c['value'])
        if c['range']:
            value += f" ({fmt_num(c['range'][0])}-{fmt_num(c['range'][1])})"
        limit = '—' if c['limit'] is None else ('>= ' if c['higher_is_better'] else '<= ') + fmt_num(c['limit'])
        met = {'': '—', 'missed': '**missed**'}.get(verdict(c), verdict(c))
        rows.append([c['target'], c['dtype'], c['batch_size'], f"`{c['row']}` / `{c['against']}`", value, limit, met])
    if rows:
        lines.append(markdown_table(['target', 'dtype', 'batch', 'rows', 'ratio (range)', 'limit', ''], rows))
    else:
        lines.append('No target can be checked: none has both its row and its baseline in this run.\n')
    header = ['row', 'params (M)', 'GFLOP/img', 'batch', 'inference img/s', 'x base', 'train img/s', 'x base',
              'train mem +MB', 'x base', 'CPU util']
    measured = {(s['key'], s['dtype']) for s in report['rows']}
    sections = [('fullres', 'Resolution-preserving family, 32x32'), ('attention', 'S4 attention module alone, 32x32'),
                ('paper', 'Paper family against the official MaxxVit layout, 224x224'), ('peers', 'timm peers')]
    for dtype in sorted({s['dtype'] for s in report['rows']}, key=lambda d: d != 'fp32'):
        for section, title in sections:
            members = [s for s in report['rows'] if s['group'] == section and s['dtype'] == dtype]
            if not members:
                continue
            lines.append(f'## {title} ({dtype})\n')
            table = []
            for s in members:
                if not s.get('train'):
                    table.append([f"`{s['key']}`", '', '', s['batch_size'], '; '.join(s['errors'])] + [''] * 6)
                    continue
                inf, tr, r = s['infer'], s['train'], s['vs_baseline']
                table.append([
                    f"`{s['key']}`", fmt_num(s['params'] / 1e6, 3), fmt_num(s['gflops']), s['batch_size'],
                    f"{fmt_num(inf['img_s'])} ({fmt_num(inf['img_s_min'])}-{fmt_num(inf['img_s_max'])})",
                    fmt_num(r['infer']),
                    f"{fmt_num(tr['img_s'])} ({fmt_num(tr['img_s_min'])}-{fmt_num(tr['img_s_max'])})",
                    fmt_num(r['train']), f"{tr['mem_inc_mb']:,.0f}", fmt_num(r['train_mem']), cpu_cell(inf, tr),
                ])
            lines.append(markdown_table(header, table))
            baselines = sorted({s['baseline'] for s in members if s['baseline']})
            lines.append('Baselines: ' + ', '.join(
                f'`{b}`' + ('' if (b, dtype) in measured else ' (not in this run: no ratio)') for b in baselines) + '.\n')
    lines.append('## Rows\n')
    described: Dict[str, str] = {}
    for s in report['rows']:
        described.setdefault(s['key'], s['description'])
    lines.append(markdown_table(['row', 'what it is'], [[f'`{k}`', v] for k, v in described.items()]))
    return '\n'.join(lines)


PLOT_STYLE = {  # kind of row -> (legend label, colour, marker)
    'ours': ('Astroformer (ours, as shipped)', 'tab:red', 'o'),
    'explicit': ('same, explicit attention', 'tab:orange', 'v'),
    'table': ('same, table bias as a mask', 'tab:brown', 's'),
    'biasfree': ('same, no relative bias', 'tab:pink', 'D'),
    'freekernel': ('same, attention kernel free (bound)', 'tab:green', 'h'),
    'contiguous': ('same, q/k/v contiguous', 'tab:olive', '*'),
    'plain': ('design document block, plain', 'tab:purple', 'X'),
    'maxxvit': ('timm MaxxVit, official layout', 'tab:blue', '^'),
    'peer': ('timm peers', 'tab:gray', 'P'),
}


def plot_style(key: str) -> str:
    if key.startswith('maxxvit:'):
        return 'maxxvit'
    if key == 'plain_design_block':
        return 'plain'
    variant = key.rpartition('/')[2]
    if variant in PLOT_STYLE:  # a variant row drawn in its own style ('fused' rows are 'ours')
        return variant
    return 'ours' if key.startswith('astroformer') else 'peer'


def render_plot(report: Dict[str, Any], path: Path) -> None:
    """Throughput against parameters, training and inference; filled markers fp32, hollow bf16."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [s for s in report['rows'] if s.get('train') and s.get('infer') and s['group'] != 'attention']
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for ax, phase, title in ((axes[0], 'train', 'training step'), (axes[1], 'infer', 'inference')):
        labelled = set()
        for s in rows:
            label, colour, marker = PLOT_STYLE[plot_style(s['key'])]
            legend = f"{label}, {s['dtype']}"
            x = s['params'] / 1e6
            ax.scatter(x, s[phase]['img_s'], marker=marker, s=60, zorder=3, edgecolors=colour,
                       c=colour if s['dtype'] == 'fp32' else 'none', label=None if legend in labelled else legend)
            labelled.add(legend)
            ax.plot([x, x], [s[phase]['img_s_min'], s[phase]['img_s_max']], color=colour, lw=1, zorder=2)
            name = s['key'].replace('maxxvit:', 'MaxxVit ').replace('astroformer', 'af')
            ax.annotate(f"{name} {s['img_size']}px b{s['batch_size']}", (x, s[phase]['img_s']), fontsize=6,
                        xytext=(4, 2), textcoords='offset points')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('parameters (M)')
        ax.set_ylabel('images / s')
        ax.set_title(f'{title} throughput (bars: min-max over repeats)', fontsize=10)
        ax.grid(True, which='both', alpha=.3)
        ax.legend(fontsize=7, loc='best')
    m = report['machine']
    fig.suptitle(f"{m['cpu_model']} x{m['logical_cpus']} ({m['device']}), torch {m['torch']}, timm {m['timm']}, "
                 f"{report['date']}; 32px rows at batch {report['settings']['batch_size']}, 224px rows at batch "
                 f"{report['settings']['batch_size_224']} (af = astroformer)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def resolve_bf16_rows(args: argparse.Namespace, machine: Dict[str, Any]) -> str:
    if args.bf16_rows != 'auto':
        return args.bf16_rows
    if args.device != 'cpu' or machine['matmul_gflops_bf16'] is None:
        return 'all'
    # Without native bf16 instructions torch falls back to slow kernels: run the key comparisons only.
    return 'all' if machine['matmul_gflops_bf16'] >= 0.5 * machine['matmul_gflops_fp32'] else 'key'


def plan_processes(rows: List[Row], args: argparse.Namespace, bf16_rows: str) -> List[List[Tuple[Row, str]]]:
    """Units grouped by process, in suite order; bf16 units join their row's process."""
    groups: Dict[str, List[Tuple[Row, str]]] = {}
    for row in rows:
        for dtype in args.dtypes:
            unit_row = row
            if dtype == 'bf16' and bf16_rows == 'key':
                if row.key not in BF16_KEY_ROWS:
                    continue
                unit_row = replace(row, batch_size=min(row.batch_size, args.bf16_slow_batch))
            process = f'{row.key}:{dtype}' if args.isolate else f'{row.process}:{dtype}'
            groups.setdefault(process, []).append((unit_row, dtype))
    return list(groups.values())


def progress_line(result: Dict[str, Any]) -> str:
    """One unit's result in a few words, for the console."""
    parts = []
    for phase in ('infer', 'train'):
        record = result.get(phase)
        if record and record['seconds']:
            parts.append(f"{phase} {result['batch_size'] / statistics.median(record['seconds']):.2f} img/s")
    if result.get('train') and result['train']['mem_inc_mb']:
        parts.append(f"+{statistics.median(result['train']['mem_inc_mb']):,.0f} MB")
    if 'error' in result:
        parts.append(result['error'])
    return ', '.join(parts)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=None, metavar='PATTERN',
                        help='row keys to run (shell patterns, e.g. "astroformer_base/*"); default: all')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=['fp32', 'bf16'],
                        help='fp32, and/or bf16 autocast')
    parser.add_argument('--bf16-rows', default='auto', choices=['auto', 'all', 'key'],
                        help="bf16 on every row, or on the key comparisons only (auto: 'key' on a CPU whose bf16 "
                             "matmul runs at under half its fp32 speed, 'all' otherwise)")
    parser.add_argument('--bf16-slow-batch', type=int, default=4,
                        help="batch (at most) of the bf16 rows when --bf16-rows resolves to 'key'")
    parser.add_argument('--batch-size', type=int, default=64, help='batch of the 32x32 rows')
    parser.add_argument('--batch-size-224', type=int, default=8, help='batch of the 224x224 rows')
    parser.add_argument('--batch-override', nargs='*', default=['astroformer_large=16'], metavar='ROW=BATCH',
                        help='per-model batch (a model name, "attention", or a peer key such as resnet18@32)')
    parser.add_argument('--fullres-models', nargs='*', default=list(FULLRES_MODELS))
    parser.add_argument('--paper-models', nargs='*', default=list(PAPER_MODELS))
    parser.add_argument('--peers-32', nargs='*', default=list(PEERS_32))
    parser.add_argument('--peers-224', nargs='*', default=list(PEERS_224))
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per row and phase (>= 2 with --compile)')
    parser.add_argument('--repeats', type=int, default=3, help='timed repeats per row, phase and round')
    parser.add_argument('--min-repeat-time', type=float, default=1.0,
                        help='seconds a timed repeat lasts at least (fast rows run several steps per repeat)')
    parser.add_argument('--rounds', type=int, default=1, help='run the whole plan this many times')
    parser.add_argument('--isolate', action='store_true', help='one process per row (and dtype)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model (the warm-up compiles)')
    parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                        help='channels_last memory format (default: on for CUDA, off on CPU)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--min-cpu-util', type=float, default=0.85,
                        help='CPU: a repeat counts only if the process got this share of its threads\' CPU time '
                             '(process CPU s per wall s / threads); others are retried (0 disables)')
    parser.add_argument('--max-retries', type=int, default=3, help='retries of a contended repeat')
    parser.add_argument('--retry-wait', type=float, default=10., help='seconds to wait before a retry')
    parser.add_argument('--no-flops', action='store_true', help='skip counting GFLOPs')
    parser.add_argument('--row-timeout', type=float, default=3600., help='seconds per row before giving up')
    parser.add_argument('--quick', action='store_true',
                        help='batch 8 (32px) / 2 (224px), 2 repeats, fp32; no astroformer_large/2/3 or 224px peers')
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default=None, help='output file stem (default: speed_<device>[_quick])')
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--resume', action='store_true', help='keep rows already measured in the output JSON')
    parser.add_argument('--rerender', action='store_true',
                        help='rewrite the markdown and PNG from the existing JSON (no measurements)')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--worker-out', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(json.loads(args.worker))
        Path(args.worker_out).write_text(json.dumps(result))
        return result

    if args.quick:
        args.batch_size, args.batch_size_224, args.repeats, args.dtypes = 8, 2, 2, ['fp32']
        args.batch_override = []
        args.fullres_models = [m for m in args.fullres_models if m != 'astroformer_large']
        args.paper_models = [m for m in args.paper_models if m in ('astroformer_0', 'astroformer_1')]
        args.peers_224 = []
    if args.channels_last is None:
        args.channels_last = args.device.startswith('cuda')
    name = args.name or f"speed_{args.device.split(':')[0]}{'_quick' if args.quick else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f'{name}.json'

    if args.rerender:
        if not json_path.exists():
            raise SystemExit(f'--rerender needs {json_path}: measure first (without --rerender), or pass its --name')
        report = json.loads(json_path.read_text())
        write_markdown_and_plot(report, json_path, plot=not args.no_plot)
        print(f"rewrote {json_path.with_suffix('.md')}" + ('' if args.no_plot else f", {json_path.with_suffix('.png')}"))
        return report

    rows = select_rows(build_rows(args), args.models)
    started = time.time()
    machine = machine_info(args.device)
    machine['matmul_size'] = MATMUL_PROBE_SIZE
    machine['matmul_gflops_fp32'] = matmul_gflops(torch.float32, MATMUL_PROBE_SIZE, device=args.device)
    machine['matmul_gflops_bf16'] = (
        matmul_gflops(torch.bfloat16, MATMUL_PROBE_SIZE, device=args.device) if 'bf16' in args.dtypes else None)
    bf16_rows = resolve_bf16_rows(args, machine)
    processes = plan_processes(rows, args, bf16_rows)

    previous = json.loads(json_path.read_text()).get('runs', []) if args.resume and json_path.exists() else []
    runs: List[Dict[str, Any]] = []
    report: Dict[str, Any] = {}
    total = args.rounds * len(processes)
    for round_index in range(args.rounds):
        for i, units in enumerate(processes):
            done = [r for r in previous if r['round'] == round_index and 'error' not in r and any(
                (r['key'], r['dtype'], r['batch_size']) == (row.key, dtype, row.batch_size) for row, dtype in units)]
            if len(done) == len(units):
                runs += done
                continue
            process_start = time.time()
            results = run_process(units, args)
            for result in results:
                result.update(round=round_index, loadavg=os.getloadavg())
                runs.append(result)
                print(f"  {result['key']} {result['dtype']} b{result['batch_size']}: {progress_line(result)}",
                      flush=True)
            print(f'[{round_index * len(processes) + i + 1}/{total}, {(time.time() - started) / 60:.1f} min] '
                  f'process of {len(units)} rows took {time.time() - process_start:.0f} s', flush=True)
            report = write_outputs(args, name, machine, bf16_rows, rows, runs, started, plot=False)
    report = write_outputs(args, name, machine, bf16_rows, rows, runs, started, plot=not args.no_plot)
    print(f"wrote {json_path}, {json_path.with_suffix('.md')}" +
          ('' if args.no_plot else f", {json_path.with_suffix('.png')}"))
    for c in report['targets']:
        print(f"  {c['target']:52s} {c['dtype']} {c['row']:26s} {fmt_num(c['value']):>6s} {verdict(c).upper()}")
    return report


def write_outputs(
        args: argparse.Namespace,
        name: str,
        machine: Dict[str, Any],
        bf16_rows: str,
        rows: List[Row],
        runs: List[Dict[str, Any]],
        started: float,
        plot: bool,
) -> Dict[str, Any]:
    """Aggregate what has run so far; write JSON and markdown (and the PNG at the end)."""
    machine = dict(machine, loadavg_end=os.getloadavg() if hasattr(os, 'getloadavg') else None)
    summaries = aggregate(rows, runs)
    report = {
        'command': command_line(),
        'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
        'wall_time_s': time.time() - started,
        'machine': machine,
        'settings': {'warmup': args.warmup, 'repeats': args.repeats, 'rounds': args.rounds,
                     'min_repeat_time': args.min_repeat_time, 'isolate': args.isolate, 'compile': args.compile,
                     'min_cpu_util': args.min_cpu_util, 'max_retries': args.max_retries, 'threads': args.threads,
                     'retry_wait': args.retry_wait,
                     'channels_last': args.channels_last, 'bf16_rows': bf16_rows, 'dtypes': args.dtypes,
                     'batch_size': args.batch_size, 'batch_size_224': args.batch_size_224,
                     'batch_override': args.batch_override, 'bf16_slow_batch': args.bf16_slow_batch,
                     'num_classes': NUM_CLASSES, 'optimizer': 'adamw', 'loss': 'cross-entropy'},
        'targets': check_targets(summaries),
        'rows': summaries,
        'runs': runs,
    }
    json_path = args.out_dir / f'{name}.json'
    write_text_atomic(json_path, json.dumps(report, indent=1))
    write_markdown_and_plot(report, json_path, plot)
    return report


def write_markdown_and_plot(report: Dict[str, Any], json_path: Path, plot: bool) -> None:
    """The markdown tables and (if asked, and any row trained) the PNG beside the report's JSON."""
    write_text_atomic(json_path.with_suffix('.md'), render_markdown(report))
    if plot and any(s.get('train') for s in report['rows']):
        render_plot(report, json_path.with_suffix('.png'))


if __name__ == '__main__':
    main()
