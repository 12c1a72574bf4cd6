#!/usr/bin/env python3
"""Speed and memory of the Astroformer models against the alternatives, measured side by side in one run.

Absolute times drift on a shared machine; ratios measured together hold. So rows that are compared run in one
subprocess and take turns, timed repeat by timed repeat, for inference (``inference_mode``) and for a training step
(forward + cross-entropy + backward + AdamW step). Each repeat also reports its peak memory above the memory right
before it (CPU: VmHWM after resetting it through /proc/self/clear_refs; CUDA: ``max_memory_allocated``).

Rows (``--models`` selects them by key, shell-style patterns): ``<model>/<variant>`` (VARIANTS) for each of
``--fullres-models`` at 32x32; ``plain_design_block`` and ``attention/<variant>`` (the ``--reference``'s S4 attention
alone); each paper model at 224 against ``maxxvit:<model>``; timm peers. Writes ``<name>.json`` (every timed repeat),
``<name>.md`` and ``<name>.png``; the paired ratios listed, and their limits, are data (``--targets``), and
``--rerender`` judges a report's rows against them again. benchmarks/README.md has the commands.
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
    MemoryProbe, command_line, create_benchmark_model, fmt_num, machine_info, markdown_table, matmul_gflops,
    read_status_kb, release_free_memory, write_text_atomic,
)

NUM_CLASSES = 10
MATMUL_PROBE_SIZE = 512  # square matmul timed at the start: a gauge of contention and of bf16 support
TARGETS = HERE / 'results' / 'speed_targets.json'

# full-resolution variant -> (model kwargs, attention kernel replaced by its values, description)
FOURIER4 = {'rel_pos_type': 'fourier', 'rel_pos_freqs': 4}
VARIANTS = {  # pinned to the 4-frequency Fourier W these rows were first measured with (the default now has 16)
    'fused': (FOURIER4, False, 'Fourier W (4 frequencies) folded into q/k: fused SDPA, no mask'),
    'explicit': ({**FOURIER4, 'attn_impl': 'explicit'}, False,
                 "same weights, attn_impl='explicit': softmax(q.(k+r)/sqrt(d) + W) @ v, the N x N matrix materialised"),
    'biasfree': ({'rel_pos_type': 'none'}, False,
                 "rel_pos_type='none' (no relative bias): the maskless fused kernel, the ceiling at the same shape"),
    'table': ({'rel_pos_type': 'table'}, False,
              'rel_pos_type="table" (the paper\'s W): learned table as a 4-D mask requiring grad'),
    'freekernel': (FOURIER4, True,
                   "'fused' with the attention kernel replaced by its values (a kernel that costs nothing; every "
                   "other op kept): the bound on the speed-up any attention kernel can give"),
}
SECTIONS = {'fullres': 'Full-resolution family', 'attention': 'S4 attention module alone',
            'paper': 'Paper family against the official MaxxVit layout', 'peers': 'timm peers'}
METRICS = {'train': ('train', 'img_s', 'train throughput'), 'infer': ('infer', 'img_s', 'inference throughput'),
           'train_mem': ('train', 'mem_inc_mb', 'train peak memory')}


@dataclass
class Row:
    """One benchmarked configuration."""
    key: str
    group: str  # table section, a key of SECTIONS
    process: str  # rows with the same process id run (interleaved) in one subprocess
    kind: str  # 'timm' (create_benchmark_model), 'maxxvit' (official layout), 'plain' (design block), 'module'
    model: str
    img_size: int
    batch_size: int
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    free_kernel: bool = False  # baselines.free_attention_kernel
    baseline: Optional[str] = None
    description: str = ''


def build_rows(args: argparse.Namespace) -> List[Row]:
    """Every row of the suite; rows compared with each other share a process."""
    overrides = {}
    for item in args.batch_override:
        name, _, value = item.partition('=')
        if not value.isdigit():
            raise SystemExit(f'--batch-override expects ROW=BATCH, got {item!r}')
        overrides[name] = int(value)
    ref, first = args.reference, (args.paper_models or [None])[0]
    rows: List[Row] = []
    for name in args.fullres_models:
        batch = overrides.get(name, args.batch_size)
        rows += [Row(f'{name}/{variant}', 'fullres', name, 'timm', name, 32, batch, dict(kwargs), free,
                     f'{name}/explicit', text) for variant, (kwargs, free, text) in VARIANTS.items()]
        if name == ref:
            rows.append(Row('plain_design_block', 'fullres', name, 'plain', name, 32, batch,
                            baseline=f'{name}/explicit', description=(
                                f'{name} with S4 = the design document block written plainly (1 head, no scaling, '
                                'norm, MLP or projection; both N x N weight matrices materialised)')))
            rows += [Row(f'{peer}@32', 'peers', name, 'timm', peer, 32, overrides.get(f'{peer}@32', args.batch_size),
                         baseline=f'{name}/fused', description='timm peer at 32x32')  # in the reference's process
                     for peer in args.peers_32]
    rows += [Row(f'attention/{variant}', 'attention', 'attention', 'module', ref, 32,
                 overrides.get('attention', args.batch_size), dict(kwargs), free, 'attention/explicit',
                 f"{ref}'s S4 attention alone: {text}") for variant, (kwargs, free, text) in VARIANTS.items()]
    for name in args.paper_models:
        batch = overrides.get(name, args.batch_size_224)
        rows.append(Row(name, 'paper', name, 'timm', name, 224, batch, baseline=f'maxxvit:{name}',
                        description='ours: MaxxVit C-C-C-T with runtime-size relative attention, as shipped'))
        rows.append(Row(f'maxxvit:{name}', 'paper', name, 'maxxvit', name, 224, batch, baseline=f'maxxvit:{name}',
                        description="timm's MaxxVit with the official layout (built for 224, runs only there)"))
    rows += [Row(peer, 'peers', first or 'peers224', 'timm', peer, 224, overrides.get(peer, args.batch_size_224),
                 baseline=first, description='timm peer at its default 224x224')  # in the first paper model's process
             for peer in args.peers_224]
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

def build_module(row: Row) -> Tuple[nn.Module, Tuple[int, ...]]:
    """The model (or attention module) of a row and its input shape."""
    from baselines import free_attention_kernel, official_maxxvit, plain_design_model
    from timm_astro.layers import RelativeAttention2d

    if row.kind == 'maxxvit':
        model = official_maxxvit(row.model, num_classes=NUM_CLASSES, img_size=row.img_size)
    elif row.kind == 'plain':
        model = plain_design_model(row.model, num_classes=NUM_CLASSES)
    else:
        model = create_benchmark_model(row.model, NUM_CLASSES, row.img_size, **row.model_kwargs)
    if row.kind == 'module':  # the model's (first) relative attention, as built there
        model = next(m for m in model.modules() if isinstance(m, RelativeAttention2d))
    if row.free_kernel and not free_attention_kernel(model):
        raise RuntimeError(f'{row.key}: no RelativeAttention2d to patch')
    chans = model.qkv.in_channels if row.kind == 'module' else 3
    return model, (row.batch_size, chans, row.img_size, row.img_size)


def nxn_bytes(model: nn.Module, row: Row) -> int:
    """Rough bytes of the N x N matrices a training step materialises: the explicit form, the plain block and a
    table (as an SDPA mask that requires grad it takes the math path); 0 for maskless fused attention."""
    from baselines import PlainRelativeAttention
    from timm_astro.layers import RelativeAttention2d, RelPosBiasTable
    matrices = 0
    for m in model.modules():
        if isinstance(m, PlainRelativeAttention):
            matrices += 6
        elif isinstance(m, RelativeAttention2d) and (not m.fused_attn or isinstance(m.rel_pos, RelPosBiasTable)):
            matrices += 4 * m.num_heads
    if not matrices:
        return 0
    info = getattr(model, 'feature_info', None)  # S4's map: the input over the model's total stride
    n = (row.img_size // (info[-1]['reduction'] if info else 1)) ** 2
    return matrices * row.batch_size * n * n * 4


def count_gflops(model: nn.Module, shape: Tuple[int, ...], device: torch.device) -> Optional[float]:
    """Forward GFLOPs per sample, attention counted in its explicit form (torch's counter skips the CPU fused
    kernel, and the fused Fourier form pads v); None where the counter fails, which must not cost the timing. Leaves
    the model in eval mode (every step sets its own)."""
    from torch.utils.flop_counter import FlopCounterMode
    fused = [m for m in model.modules() if getattr(m, 'fused_attn', False)]
    try:
        for module in fused:
            module.fused_attn = False
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(torch.randn(1, *shape[1:], device=device))
        return counter.get_total_flops() / 1e9
    except Exception:
        return None
    finally:
        for module in fused:
            module.fused_attn = True


# one list per phase of a unit, one entry per timed repeat ('discarded': per retried contended attempt)
REPEAT_FIELDS = ('seconds', 'mem_inc_mb', 'mem_peak_mb', 'cpu_util', 'contended', 'discarded')


@dataclass
class Unit:
    """A row in one dtype, with its step function per phase once built."""
    row: Row
    dtype: str
    step: Dict[str, Callable[[], None]] = field(default_factory=dict)
    result: Dict[str, Any] = field(default_factory=dict)


def prepare_unit(unit: Unit, spec: Dict[str, Any], device: torch.device) -> None:
    """Build the model, input, optimizer and the two step functions of a unit."""
    from timm.optim import create_optimizer_v2

    row = unit.row
    torch.manual_seed(0)  # every variant of a model gets the same weights
    model, shape = build_module(row)
    available = read_status_kb('MemAvailable', '/proc/meminfo') * 1024
    needed = nxn_bytes(model, row) if device.type == 'cpu' else 0
    if needed and available and needed > 0.8 * available:
        raise MemoryError(f'skipped: N x N attention needs ~{needed / 2 ** 30:.1f} GB, '
                          f'{available / 2 ** 30:.1f} GB available')
    model = model.to(device)
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

    unit.step = {'infer': infer_step, 'train': train_step}


def warm_up(unit: Unit, phase: str, count: int, sync: Callable[[], None], min_repeat_time: float) -> None:
    """Untimed steps; the last one's time sets how many steps a timed repeat takes to last ``min_repeat_time``."""
    last = 0.
    for _ in range(count):
        start = time.perf_counter()
        unit.step[phase]()
        sync()
        last = time.perf_counter() - start
    steps = max(1, math.ceil(min_repeat_time / last)) if last > 0 else 1
    unit.result[phase] = dict({name: [] for name in REPEAT_FIELDS}, steps_per_repeat=steps)


def timed_repeat(unit: Unit, phase: str, probe: MemoryProbe, sync: Callable[[], None], min_util: float,
                 spec: Dict[str, Any]) -> None:
    """One timed repeat of a unit's phase, retried (after a pause) while the process got less CPU than asked.

    CPU time per wall second below ``min_util`` means another process held a core for part of the repeat; with
    OpenMP threads waiting on a descheduled peer that can slow a step many times over. Discarded attempts are kept
    in the record; if every retry is contended the last attempt is kept and flagged.
    """
    record = unit.result[phase]
    steps = record['steps_per_repeat']
    for attempt in range(spec['max_retries'] + 1):
        probe.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            unit.step[phase]()
        sync()
        wall = time.perf_counter() - wall0
        util = (time.process_time() - cpu0) / wall
        inc, peak = probe.stop()
        contended = util < min_util
        if not contended or attempt == spec['max_retries']:
            break
        record['discarded'].append({'seconds': wall / steps, 'cpu_util': util})
        time.sleep(spec['retry_wait'])
    for name, value in zip(REPEAT_FIELDS, (wall / steps, inc, peak, util, contended)):
        record[name].append(value)


def run_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure the units of one process: inference, then training; after the warm-up of every unit, timed repeat 1
    of every unit, then repeat 2, and so on. A unit that fails is reported and leaves the rotation."""
    import timm_astro  # noqa: F401  registers the models
    device = torch.device(spec['device'])
    if spec['threads']:
        torch.set_num_threads(spec['threads'])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    probe = MemoryProbe(device)
    units = [Unit(Row(**u['row']), u['dtype']) for u in spec['units']]
    live = []
    for unit in units:
        try:
            prepare_unit(unit, spec, device)
        except MemoryError as e:  # skipped: it would not fit
            unit.result['error'] = str(e)
        except Exception as e:
            unit.result['error'] = f'build failed: {type(e).__name__}: {e}'[:400]
        else:
            live.append(unit)
    gc.collect()
    release_free_memory()
    rss_idle_mb = read_status_kb('VmRSS') / 1024
    warmup = max(spec['warmup'], 2) if spec['compile'] else spec['warmup']
    # A repeat counts only if this process got the CPU it asked for; on a shared machine the others are retried.
    min_util = spec['min_cpu_util'] * torch.get_num_threads() if device.type == 'cpu' else 0.
    for phase in ('infer', 'train'):
        for repeat in range(-1, spec['repeats']):  # -1: the warm-up
            for unit in list(live):
                try:
                    if repeat < 0:
                        warm_up(unit, phase, warmup, sync, spec['min_repeat_time'])
                    else:
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

def run_process(units: List[Tuple[Row, str]], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Run units in one fresh subprocess. A failure of the process becomes an ``error`` entry of each of its units,
    never an exception; its rows are not rerun elsewhere, since their ratios hold only within one process."""
    spec = dict(settings(args), units=[{'row': asdict(row), 'dtype': dtype} for row, dtype in units],
                device=args.device, flops=not args.no_flops)
    timeout = args.row_timeout * len(units)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / 'result.json'
        cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', json.dumps(spec), '--worker-out',
               str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            failure = f'timed out after {timeout:.0f} s'
        else:
            if proc.returncode == 0 and out_path.exists():
                worker = json.loads(out_path.read_text())
                return [dict(unit, rss_idle_mb=worker['rss_idle_mb'], memory_method=worker['memory_method'],
                             threads=worker['threads']) for unit in worker['units']]
            failure = (('killed (out of memory?)' if proc.returncode in (-9, 137) else f'exit {proc.returncode}')
                       + ': ' + ' / '.join(proc.stderr.strip().splitlines()[-3:]))
    return [{'key': row.key, 'dtype': dtype, 'batch_size': row.batch_size, 'error': failure} for row, dtype in units]


def summarize_phase(records: List[Dict[str, Any]], batch: int) -> Dict[str, Any]:
    """Median throughput and its spread (min-max over the repeats of all records), median and max memory."""
    pooled = {name: [value for record in records for value in record[name]] for name in REPEAT_FIELDS}
    seconds, inc = pooled['seconds'], pooled['mem_inc_mb']
    return {
        'img_s': batch / statistics.median(seconds),
        'img_s_min': batch / max(seconds),
        'img_s_max': batch / min(seconds),
        'repeats': len(seconds),
        'steps_per_repeat': records[-1]['steps_per_repeat'],
        'mem_inc_mb': statistics.median(inc),
        'mem_inc_mb_range': (min(inc), max(inc)),
        'mem_peak_mb': max(pooled['mem_peak_mb']),
        'cpu_util': statistics.median(pooled['cpu_util']),
        'contended': sum(pooled['contended']),  # kept repeats that never got their CPU share
        'discarded': len(pooled['discarded']),  # contended attempts that were retried
    }


def aggregate(rows: List[Row], runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One summary per (row, dtype) measured, the repeats of all rounds pooled; fp32 first, rows in suite order."""
    summaries = []
    for dtype in sorted({run['dtype'] for run in runs}, key=lambda d: d != 'fp32'):
        for row in rows:
            mine = [run for run in runs if (run['key'], run['dtype']) == (row.key, dtype)]
            if not mine:
                continue
            entry = {'key': row.key, 'group': row.group, 'process': row.process, 'dtype': dtype,
                     'batch_size': mine[0]['batch_size'], 'img_size': row.img_size, 'baseline': row.baseline,
                     'description': row.description, 'params': None, 'gflops': None, 'rss_idle_mb': None,
                     'errors': [run['error'] for run in mine if 'error' in run]}
            for run in mine:
                entry.update({k: run[k] for k in ('params', 'gflops', 'rss_idle_mb') if k in run})
            for phase in ('infer', 'train'):
                records = [run[phase] for run in mine if run.get(phase) and run[phase]['seconds']]
                entry[phase] = summarize_phase(records, entry['batch_size']) if records else None
            summaries.append(entry)
    return summaries


def ratio(a: Dict[str, Any], b: Optional[Dict[str, Any]], metric: str) -> Optional[Tuple[float, Optional[Tuple]]]:
    """``a / b`` for a metric of two rows measured together, and for throughput its range (worst repeat against
    best, best against worst); None unless both were measured at one batch (and, where known, in one process)."""
    phase, name, _ = METRICS[metric]
    pa, pb = a.get(phase), (b or {}).get(phase)
    if not pa or not pb or not pb[name] or a['batch_size'] != b['batch_size']:
        return None
    if a.get('process') and b.get('process') and a['process'] != b['process']:  # (reports before 'process': trusted)
        return None
    spread = (pa['img_s_min'] / pb['img_s_max'], pa['img_s_max'] / pb['img_s_min']) if name == 'img_s' else None
    return pa[name] / pb[name], spread


def verdict(check: Dict[str, Any]) -> str:
    """'met', 'missed', or 'within noise' when the median misses the limit but the ratio's range (worst to best
    repeat) reaches it: the repeats cannot tell the two rows apart at that limit. '' without a limit."""
    low, high = check.get('at_least'), check.get('at_most')
    if low is None and high is None:
        return ''
    if (low is None or check['value'] >= low) and (high is None or check['value'] <= high):
        return 'met'
    best = check['range'] and (max(check['range']) if low is not None else min(check['range']))
    return 'within noise' if best and (best >= low if low is not None else best <= high) else 'missed'


def comparisons(summaries: List[Dict[str, Any]], targets: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The paired ratios that ``targets`` name, wherever both rows were measured, judged where a limit is given."""
    index = {(s['key'], s['dtype']): s for s in summaries}
    checks = []
    for s in sorted(summaries, key=lambda s: s['dtype'] != 'fp32'):
        for entry in targets:
            if not fnmatch.fnmatchcase(s['key'], entry['rows']):
                continue
            against = entry['against'].format(key=s['key'], prefix=s['key'].rpartition('/')[0])
            for metric in entry['metrics']:
                measured = ratio(s, index.get((against, s['dtype'])), metric)
                if measured is None:
                    continue
                check = {'comparison': entry['label'], 'metric': metric, 'dtype': s['dtype'],
                         'batch_size': s['batch_size'], 'row': s['key'], 'against': against, 'value': measured[0],
                         'range': measured[1], 'at_least': entry.get('at_least'), 'at_most': entry.get('at_most')}
                checks.append(dict(check, verdict=verdict(check)))
    return checks


def fmt_ratio(measured: Optional[Tuple[float, Optional[Tuple]]]) -> str:
    if measured is None:
        return '—'
    value, spread = measured
    return fmt_num(value) + (f' ({fmt_num(spread[0])}-{fmt_num(spread[1])})' if spread else '')


def throughput(phase: Dict[str, Any]) -> str:
    """Median img/s (min-max over the repeats)."""
    return fmt_ratio((phase['img_s'], (phase['img_s_min'], phase['img_s_max'])))


def cpu_cell(infer: Dict[str, Any], train: Dict[str, Any]) -> str:
    """Median CPU util of the training repeats, and how many repeats were retried or stayed contended."""
    retried = infer.get('discarded', 0) + train.get('discarded', 0)
    contended = infer.get('contended', 0) + train.get('contended', 0)
    notes = ([f'{retried} retried'] if retried else []) + ([f'**{contended} contended**'] if contended else [])
    return f"{train['cpu_util']:.2f}" + (f" ({', '.join(notes)})" if notes else '')


INTRO = """\
# Speed and memory ({device})

Machine: {cpu_model}, {logical_cpus} logical CPUs ({threads} torch threads per row), {mem_total_gb} GB RAM, torch CPU \
capability {torch_cpu_capability} (flags: {flags}); torch {torch}, timm {timm}, timm-astro {timm_astro}, Python \
{python}.{gpu} {matmul_size}^3 matmul at the start: fp32 {fp32} GFLOP/s, bf16 {bf16} GFLOP/s. Load average at the \
start {load_start}; at the end {load_end}.

Command: `{command}` ({minutes:.1f} min, started {date}).

Warm-up {warmup} step per phase, then {repeats} timed repeats x {rounds} round(s), each repeat lasting >= \
{min_repeat_time} s; rows of one section take turns repeat by repeat in one process{isolated}. bf16 rows: \
{bf16_rows}; compile {compile}; channels_last {channels_last}.

Throughput: median (min-max) over repeats, images/s. Train memory: peak resident memory during a training step above \
the resident memory right before it (median over repeats, MB). x base: this row / its baseline row (same dtype, \
batch and process), with the range: worst repeat against best and best against worst. CPU util: process CPU seconds \
per wall second during the training repeats. A repeat during which the process got less than {min_cpu_util:.0%} of \
its threads' CPU time (another process held a core) was retried after {retry_wait:.0f} s, up to {max_retries} times; \
'retried' counts those attempts (not used), 'contended' the repeats kept although every retry was contended.

## Comparisons

The paired ratios named in {targets_file}; a limit there makes one a target. 'within noise': the median misses the \
limit but the range reaches it, so the repeats cannot tell the rows apart there.
"""


def render_markdown(report: Dict[str, Any], targets_file: str) -> str:
    """Comparisons, then one table per section and dtype, then what each row is."""
    m, st = report['machine'], report['settings']
    lines = [INTRO.format_map({**m, **st, **dict(
        threads=st.get('threads') or m['torch_threads'], flags=', '.join(m['cpu_flags']) or 'none',
        gpu=f" GPU: {m['gpu']}." if m.get('gpu') else '',
        fp32=fmt_num(m['matmul_gflops_fp32']), bf16=fmt_num(m['matmul_gflops_bf16']),
        load_start=', '.join(f'{v:.1f}' for v in m['loadavg_start'] or []),
        load_end=', '.join(f'{v:.1f}' for v in m['loadavg_end'] or []), command=report['command'],
        minutes=report['wall_time_s'] / 60, date=report['date'], targets_file=targets_file,
        isolated=' (isolated: one process per row)' if st['isolate'] else '')})]
    table = [[c['comparison'], METRICS[c['metric']][2], c['dtype'], c['batch_size'], f"`{c['row']}` / `{c['against']}`",
              fmt_ratio((c['value'], c['range'])),
              '—' if c['at_least'] is None and c['at_most'] is None else
              f">= {fmt_num(c['at_least'])}" if c['at_least'] is not None else f"<= {fmt_num(c['at_most'])}",
              {'': '—', 'missed': '**missed**'}.get(c['verdict'], c['verdict'])] for c in report['comparisons']]
    lines.append(markdown_table(['comparison', 'measure', 'dtype', 'batch', 'rows', 'ratio (range)', 'limit', ''],
                                table) if table else 'None: no pair named there has both rows in this run.\n')
    index = {(s['key'], s['dtype']): s for s in report['rows']}
    header = ['row', 'params (M)', 'GFLOP/img', 'batch', 'inference img/s', 'x base', 'train img/s', 'x base',
              'train mem +MB', 'x base', 'CPU util']
    for dtype in sorted({s['dtype'] for s in report['rows']}, key=lambda d: d != 'fp32'):
        for section, title in SECTIONS.items():
            members = [s for s in report['rows'] if s['group'] == section and s['dtype'] == dtype]
            if not members:
                continue
            sizes = ', '.join(f'{n}x{n}' for n in sorted({s['img_size'] for s in members}))
            lines.append(f'## {title}, {sizes} ({dtype})\n')
            table = []
            for s in members:
                inf, tr, base = s['infer'], s['train'], index.get((s['baseline'], dtype))
                x_base = lambda metric: '1.00' if s['key'] == s['baseline'] else fmt_ratio(ratio(s, base, metric))
                if not tr or not inf:
                    table.append([f"`{s['key']}`", '', '', s['batch_size'], '; '.join(s['errors'])] + [''] * 6)
                    continue
                table.append([f"`{s['key']}`", fmt_num(s['params'] / 1e6, 3), fmt_num(s['gflops']), s['batch_size'],
                              throughput(inf), x_base('infer'), throughput(tr), x_base('train'),
                              f"{tr['mem_inc_mb']:,.0f}", x_base('train_mem'), cpu_cell(inf, tr)])
            lines.append(markdown_table(header, table))
            baselines = sorted({s['baseline'] for s in members if s['baseline']})
            lines.append('Baselines: ' + ', '.join(
                f'`{b}`' + ('' if (b, dtype) in index else ' (not in this run: no ratio)') for b in baselines) + '.\n')
    described: Dict[str, str] = {}
    for s in report['rows']:
        described.setdefault(s['key'], s['description'])
    lines += ['## Rows\n', markdown_table(['row', 'what it is'], [[f'`{k}`', v] for k, v in described.items()])]
    return '\n'.join(lines)


PLOT_STYLE = {  # kind of row -> (legend label, colour, marker)
    'ours': ('Astroformer (ours, as shipped)', 'tab:red', 'o'),
    'explicit': ('same, explicit attention', 'tab:orange', 'v'),
    'table': ('same, table bias as a mask', 'tab:brown', 's'),
    'biasfree': ('same, no relative bias', 'tab:pink', 'D'),
    'freekernel': ('same, attention kernel free (bound)', 'tab:green', 'h'),
    'contiguous': ('same, q/k/v contiguous', 'tab:olive', '*'),  # rows of reports before the library did this
    'plain': ('design document block, plain', 'tab:purple', 'X'),
    'maxxvit': ('timm MaxxVit, official layout', 'tab:blue', '^'),
    'peer': ('timm peers', 'tab:gray', 'P'),
}


def plot_style(row: Dict[str, Any]) -> str:
    """A row's style, from its section and key as build_rows names them ('fused' rows are 'ours')."""
    key, variant = row['key'], row['key'].rpartition('/')[2]
    if row['group'] == 'peers':
        return 'peer'
    if key.startswith('maxxvit:'):
        return 'maxxvit'
    if '/' not in key and row['group'] == 'fullres':
        return 'plain'
    return variant if variant in PLOT_STYLE else 'ours'


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
            label, colour, marker = PLOT_STYLE[plot_style(s)]
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


def plan_processes(rows: List[Row], args: argparse.Namespace, bf16_rows: str) -> List[List[Tuple[Row, str]]]:
    """Units grouped by process, in suite order; bf16 units join their row's process. On a CPU with slow bf16
    ('key'), bf16 runs only the key comparisons, at --bf16-slow-batch."""
    ref, first = args.reference, (args.paper_models or [None])[0]
    key_rows = {f'{ref}/fused', f'{ref}/explicit', 'plain_design_block', first, f'maxxvit:{first}'}
    groups: Dict[str, List[Tuple[Row, str]]] = {}
    for row in rows:
        for dtype in args.dtypes:
            unit_row = row
            if dtype == 'bf16' and bf16_rows == 'key':
                if row.key not in key_rows:
                    continue
                unit_row = replace(row, batch_size=min(row.batch_size, args.bf16_slow_batch))
            process = f'{row.key}:{dtype}' if args.isolate else f'{row.process}:{dtype}'
            groups.setdefault(process, []).append((unit_row, dtype))
    return list(groups.values())


def progress_line(result: Dict[str, Any]) -> str:
    """One unit's result in a few words, for the console."""
    parts = [f"{phase} {result['batch_size'] / statistics.median(result[phase]['seconds']):.2f} img/s"
             for phase in ('infer', 'train') if result.get(phase) and result[phase]['seconds']]
    if result.get('train') and result['train']['mem_inc_mb']:
        parts.append(f"+{statistics.median(result['train']['mem_inc_mb']):,.0f} MB")
    return ', '.join(parts + ([result['error']] if 'error' in result else []))


SETTINGS = ('warmup', 'repeats', 'rounds', 'min_repeat_time', 'isolate', 'compile', 'min_cpu_util', 'max_retries',
            'threads', 'retry_wait', 'channels_last', 'dtypes', 'batch_size', 'batch_size_224', 'batch_override',
            'bf16_slow_batch', 'reference')


def settings(args: argparse.Namespace) -> Dict[str, Any]:
    return {name: getattr(args, name) for name in SETTINGS}


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add('--models', nargs='+', default=None, metavar='PATTERN',
        help='row keys to run (shell patterns, e.g. "astroformer_base/*"); default: all')
    add('--device', default='cpu')
    add('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=['fp32', 'bf16'], help='fp32, and/or bf16 autocast')
    add('--bf16-rows', default='auto', choices=['auto', 'all', 'key'],
        help="bf16 on every row, or on the key comparisons only (auto: 'key' on a CPU whose bf16 matmul runs at "
             "under half its fp32 speed, 'all' otherwise)")
    add('--bf16-slow-batch', type=int, default=4, help="batch (at most) of the bf16 rows when --bf16-rows is 'key'")
    add('--batch-size', type=int, default=64, help='batch of the 32x32 rows')
    add('--batch-size-224', type=int, default=8, help='batch of the 224x224 rows')
    add('--batch-override', nargs='*', default=['astroformer_large=16'], metavar='ROW=BATCH',
        help='per-model batch (a model name, "attention", or a peer key such as resnet18@32)')
    add('--fullres-models', nargs='*', default=['astroformer_small', 'astroformer_base', 'astroformer_large'])
    add('--reference', default='astroformer_base',
        help='full-resolution model of the plain_design_block and attention/ rows, and baseline of the 32px peers')
    add('--paper-models', nargs='*', default=[f'astroformer_{i}' for i in range(4)])
    add('--peers-32', nargs='*', default=['resnet18', 'coatnet_0_rw_224'])
    add('--peers-224', nargs='*', default=['resnet50', 'convnext_tiny', 'coatnet_0_rw_224', 'maxvit_tiny_tf_224'])
    add('--warmup', type=int, default=1, help='untimed steps per row and phase (>= 2 with --compile)')
    add('--repeats', type=int, default=3, help='timed repeats per row, phase and round')
    add('--min-repeat-time', type=float, default=1.0,
        help='seconds a timed repeat lasts at least (fast rows run several steps per repeat)')
    add('--rounds', type=int, default=1, help='run the whole plan this many times')
    add('--isolate', action='store_true', help='one process per row (and dtype)')
    add('--compile', action='store_true', help='torch.compile the model (the warm-up compiles)')
    add('--channels-last', action=argparse.BooleanOptionalAction, default=None,
        help='channels_last memory format (default: on for CUDA, off on CPU)')
    add('--threads', type=int, default=0, help='torch threads (0: torch default)')
    add('--min-cpu-util', type=float, default=0.85,
        help="CPU: a repeat counts only if the process got this share of its threads' CPU time (process CPU s per "
             "wall s / threads); others are retried (0 disables)")
    add('--max-retries', type=int, default=3, help='retries of a contended repeat')
    add('--retry-wait', type=float, default=10., help='seconds to wait before a retry')
    add('--no-flops', action='store_true', help='skip counting GFLOPs')
    add('--row-timeout', type=float, default=3600., help='seconds per row before giving up')
    add('--quick', action='store_true',
        help='batch 8 (32px) / 2 (224px), 2 repeats, fp32; the first two full-resolution and paper models, no 224px '
             'peers')
    add('--targets', type=Path, default=TARGETS, help='the paired ratios to list and their limits (JSON)')
    add('--out-dir', type=Path, default=HERE / 'results')
    add('--name', default=None, help='output file stem (default: speed_<device>[_quick])')
    add('--no-plot', action='store_true')
    add('--resume', action='store_true', help='keep rows already measured in the output JSON')
    add('--rerender', action='store_true', help='rewrite the markdown and PNG from the existing JSON (no measurements)')
    add('--worker', default=None, help=argparse.SUPPRESS)
    add('--worker-out', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.batch_size_224, args.repeats, args.dtypes = 8, 2, 2, ['fp32']
        args.batch_override, args.peers_224 = [], []
        args.fullres_models, args.paper_models = args.fullres_models[:2], args.paper_models[:2]
    if args.channels_last is None:
        args.channels_last = args.device.startswith('cuda')
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(json.loads(args.worker))
        Path(args.worker_out).write_text(json.dumps(result))
        return result

    name = args.name or f"speed_{args.device.split(':')[0]}{'_quick' if args.quick else ''}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f'{name}.json'
    targets = json.loads(args.targets.read_text())['comparisons']
    if args.rerender:
        if not json_path.exists():
            raise SystemExit(f'--rerender needs {json_path}: measure first (without --rerender), or pass its --name')
        report = json.loads(json_path.read_text())
        report['comparisons'] = comparisons(report['rows'], targets)  # judged against the targets as they are now
        write_markdown_and_plot(report, json_path, args, plot=not args.no_plot)
        print(f"rewrote {json_path.with_suffix('.md')}" +
              ('' if args.no_plot else f", {json_path.with_suffix('.png')}"))
        return report

    rows = select_rows(build_rows(args), args.models)
    started = time.time()
    machine = dict(machine_info(args.device), matmul_size=MATMUL_PROBE_SIZE)
    machine['matmul_gflops_fp32'] = matmul_gflops(torch.float32, MATMUL_PROBE_SIZE, device=args.device)
    machine['matmul_gflops_bf16'] = (
        matmul_gflops(torch.bfloat16, MATMUL_PROBE_SIZE, device=args.device) if 'bf16' in args.dtypes else None)
    bf16_rows = args.bf16_rows
    if bf16_rows == 'auto':  # without native bf16 instructions torch falls back to slow kernels
        slow = args.device == 'cpu' and machine['matmul_gflops_bf16'] is not None and (
            machine['matmul_gflops_bf16'] < 0.5 * machine['matmul_gflops_fp32'])
        bf16_rows = 'key' if slow else 'all'
    processes = plan_processes(rows, args, bf16_rows)

    previous = json.loads(json_path.read_text()).get('runs', []) if args.resume and json_path.exists() else []
    runs: List[Dict[str, Any]] = []
    total = args.rounds * len(processes)
    for round_index in range(args.rounds):
        for i, units in enumerate(processes):
            done = [r for r in previous if r['round'] == round_index and 'error' not in r and any(
                (r['key'], r['dtype'], r['batch_size']) == (row.key, dtype, row.batch_size) for row, dtype in units)]
            if len(done) == len(units):
                runs += done
                continue
            process_start = time.time()
            for result in run_process(units, args):
                result.update(round=round_index, loadavg=os.getloadavg())
                runs.append(result)
                print(f"  {result['key']} {result['dtype']} b{result['batch_size']}: {progress_line(result)}",
                      flush=True)
            print(f'[{round_index * len(processes) + i + 1}/{total}, {(time.time() - started) / 60:.1f} min] '
                  f'process of {len(units)} rows took {time.time() - process_start:.0f} s', flush=True)
            write_outputs(args, json_path, machine, bf16_rows, rows, runs, started, targets, plot=False)
    report = write_outputs(args, json_path, machine, bf16_rows, rows, runs, started, targets, plot=not args.no_plot)
    print(f"wrote {json_path}, {json_path.with_suffix('.md')}" +
          ('' if args.no_plot else f", {json_path.with_suffix('.png')}"))
    for c in report['comparisons']:
        print(f"  {c['comparison']:30s} {METRICS[c['metric']][2]:21s} {c['dtype']} {c['row']:26s} "
              f"{fmt_num(c['value']):>6s} {c['verdict'].upper()}")
    return report


def write_outputs(args: argparse.Namespace, json_path: Path, machine: Dict[str, Any], bf16_rows: str,
                  rows: List[Row], runs: List[Dict[str, Any]], started: float, targets: List[Dict[str, Any]],
                  plot: bool) -> Dict[str, Any]:
    """Aggregate what has run so far; write JSON and markdown (and the PNG at the end)."""
    summaries = aggregate(rows, runs)
    report = {
        'command': command_line(),
        'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
        'wall_time_s': time.time() - started,
        'machine': dict(machine, loadavg_end=os.getloadavg()),
        'settings': dict(settings(args), bf16_rows=bf16_rows, num_classes=NUM_CLASSES, optimizer='adamw',
                         loss='cross-entropy'),
        'comparisons': comparisons(summaries, targets),
        'rows': summaries,
        'runs': runs,
    }
    write_text_atomic(json_path, json.dumps(report, indent=1))
    write_markdown_and_plot(report, json_path, args, plot)
    return report


def write_markdown_and_plot(report: Dict[str, Any], json_path: Path, args: argparse.Namespace, plot: bool) -> None:
    """The markdown tables and (if asked, and any row trained) the PNG beside the report's JSON."""
    path = args.targets.resolve()
    targets_file = str(path.relative_to(HERE) if path.is_relative_to(HERE) else path)
    write_text_atomic(json_path.with_suffix('.md'), render_markdown(report, targets_file))
    if plot and any(s.get('train') for s in report['rows']):
        render_plot(report, json_path.with_suffix('.png'))


if __name__ == '__main__':
    main()
