"""The GPU check of issue #13: is the full table fast where users train? One prepared run, at most ~8 minutes on one
H200 (``--budget-s``), results as JSON + markdown.

    python benchmarks/gpu_check.py --out results/gpu                       # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --dry-run --out /tmp/gc    # exercise every code path on a CPU

1. Checks: FlexAttention training of the table (forward and gradients) equals the explicit form on the device.
2. Full-resolution rows: astroformer_small / astroformer_base training steps (batch 256, 32x32, bf16 autocast,
   torch.compile) with the table via FlexAttention, the Fourier kernel, the table in the explicit form, and no W.
   Targets: table step within 1.15x of no W; table peak memory at most half of the explicit form's.
3. Paper rows: astroformer_0..3 at 256 px (bf16 autocast) against timm's MaxxVit in the official layout.

Rows run in priority order; a row that would start after the budget is reported as skipped, and the JSON is
rewritten after every row, so a run stopped from outside keeps what it measured. Every row records which attention
path its table actually took (counted in an eager step before timing).
"""
import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutils import command_line, fmt_num, machine_info, markdown_table, write_text_atomic  # noqa: E402

FULLRES_VARIANTS = {
    'table-flex': dict(rel_pos_type='table', attn_impl='auto'),  # 'auto' trains the table through flex on CUDA
    'fourier16': dict(rel_pos_type='fourier', rel_pos_freqs=16),  # the default W
    'table-explicit': dict(rel_pos_type='table', attn_impl='explicit'),
    'none': dict(rel_pos_type='none'),
}
TABLE_VS_NONE = 1.15  # target: table step time <= 1.15 x no-W step time
TABLE_VS_EXPLICIT_MEMORY = 0.5  # target: table peak memory <= 0.5 x explicit form's


class FlexCounter:
    """Counts the FlexAttention calls of timm_astro's attention (a benchmark-side patch of its module function)."""

    def __init__(self):
        import timm_astro.layers.relative_attention as ra
        self.module, self.calls = ra, 0
        self.original = ra._run_flex_attention

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)
        self.module._run_flex_attention = counted
        return self

    def __exit__(self, *exc):
        self.module._run_flex_attention = self.original


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None


def time_training(model: torch.nn.Module, batch: int, img_size: int, device: torch.device, args) -> Dict[str, Any]:
    """Warm-up (compiles) then timed steps of forward + backward + AdamW; img/s median of the steps, peak memory above
    the memory held before the first step."""
    model = model.to(device).train()
    if device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.fp32)

    def step(module):
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(module(x), y)
        loss.backward()
        opt.step()

    with FlexCounter() as counter:  # one eager step: which path the attention takes
        step(model)
    runner = torch.compile(model) if args.compile else model
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    base_mb = torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None
    start = time.perf_counter()
    for _ in range(args.warmup):
        step(runner)
    sync(device)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(runner)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory_mb(device)
    median = statistics.median(times)
    return dict(img_s=batch / median, img_s_min=batch / max(times), img_s_max=batch / min(times),
                peak_mb=None if peak is None else peak - base_mb, warmup_s=warmup_s, flex_calls=counter.calls,
                batch=batch, img_size=img_size)


def check_flex_equals_explicit(device: torch.device) -> Dict[str, Any]:
    """The table's FlexAttention training path against the explicit form: outputs and every gradient."""
    from timm_astro.layers import RelativeAttention2d
    x = torch.randn(2, 256, 8, 8, device=device)
    results = {}
    for impl in ('auto', 'explicit'):
        torch.manual_seed(0)
        attn = RelativeAttention2d(256, dim_head=32, rel_pos_type='table', window_size=(32, 32),
                                   key_context_kernel=3, attn_impl=impl).to(device).train()
        with torch.no_grad():
            attn.rel_pos.relative_position_bias_table.normal_()
        with FlexCounter() as counter:
            out = attn(x)
        out.square().mean().backward()
        results[impl] = (out.detach(), {n: p.grad for n, p in attn.named_parameters()}, counter.calls)
    (out_a, grads_a, calls), (out_e, grads_e, _) = results['auto'], results['explicit']
    diffs = {n: float((grads_a[n] - grads_e[n]).abs().max()) for n in grads_e}
    return dict(flex_calls=calls, max_abs_out=float((out_a - out_e).abs().max()), max_abs_grad=max(diffs.values()),
                worst_grad=max(diffs, key=diffs.get), ok=bool(float((out_a - out_e).abs().max()) < 1e-4
                                                              and max(diffs.values()) < 1e-4))


def plan(args, device: torch.device) -> List[Dict[str, Any]]:
    """Rows in priority order: name, section and a builder."""
    import timm
    import timm_astro  # noqa: F401
    from baselines import official_maxxvit
    rows = []
    for model_name in args.fullres_models:
        for variant, kwargs in FULLRES_VARIANTS.items():
            rows.append(dict(key=f'{model_name}/{variant}', section='fullres', model=model_name, variant=variant,
                             batch=args.batch_size, img_size=args.img_size,
                             build=lambda m=model_name, k=kwargs: timm.create_model(m, num_classes=10, **k)))
    for model_name in args.paper_models:
        rows.append(dict(key=f'{model_name}/ours', section='paper', model=model_name, variant='ours (table, auto)',
                         batch=args.paper_batch_size, img_size=args.paper_img_size,
                         build=lambda m=model_name: timm.create_model(m, num_classes=10, img_size=args.paper_img_size)))
        rows.append(dict(key=f'{model_name}/maxxvit', section='paper', model=model_name, variant="timm's MaxxVit",
                         batch=args.paper_batch_size, img_size=args.paper_img_size,
                         build=lambda m=model_name: official_maxxvit(m, num_classes=10, img_size=args.paper_img_size)))
    return rows


def verdicts(rows: Dict[str, Dict[str, Any]], models: List[str]) -> List[Dict[str, Any]]:
    out = []
    for model_name in models:
        table, none, explicit = (rows.get(f'{model_name}/{v}', {}) for v in ('table-flex', 'none', 'table-explicit'))
        if table.get('img_s') and none.get('img_s'):
            ratio = none['img_s'] / table['img_s']
            out.append(dict(model=model_name, target=f'table step <= {TABLE_VS_NONE}x no-W step',
                            value=ratio, met=ratio <= TABLE_VS_NONE))
        if table.get('peak_mb') and explicit.get('peak_mb'):
            ratio = table['peak_mb'] / explicit['peak_mb']
            out.append(dict(model=model_name, target=f'table memory <= {TABLE_VS_EXPLICIT_MEMORY}x explicit',
                            value=ratio, met=ratio <= TABLE_VS_EXPLICIT_MEMORY))
    return out


def render(result: Dict[str, Any]) -> str:
    m = result['machine']
    lines = [f"# GPU check ({m.get('gpu') or m['device']}, torch {m['torch']}, timm {m['timm']})", '',
             f"`{result['command']}`", '']
    if result.get('dry_run'):
        lines += ['**Dry run**: tiny batches and steps, to exercise the code paths; the figures mean nothing.', '']
    check = result.get('check')
    if check:
        lines += ['## FlexAttention table training vs explicit', '',
                  markdown_table(['flex calls', 'max |out diff|', 'max |grad diff|', 'ok'],
                                 [[check.get('flex_calls'), fmt_num(check.get('max_abs_out')),
                                   fmt_num(check.get('max_abs_grad')), check.get('ok', check.get('error'))]]), '']
    for section, title in (('fullres', 'Full-resolution family, training step'), ('paper', 'Paper family, training step')):
        rows = [r for r in result['rows'].values() if r['section'] == section]
        if not rows:
            continue
        lines += [f'## {title}', '', markdown_table(
            ['row', 'batch', 'px', 'img/s (min-max)', 'peak MB', 'flex calls', 'warm-up s', 'note'],
            [[r['key'], r['batch'], r['img_size'],
              f"{fmt_num(r.get('img_s'))} ({fmt_num(r.get('img_s_min'))}-{fmt_num(r.get('img_s_max'))})"
              if r.get('img_s') else '—', fmt_num(r.get('peak_mb')), r.get('flex_calls', '—'),
              fmt_num(r.get('warmup_s')), r.get('skipped') or r.get('error', '')] for r in rows]), '']
    if result.get('verdicts'):
        lines += ['## Targets', '', markdown_table(
            ['model', 'target', 'measured', 'met'],
            [[v['model'], v['target'], fmt_num(v['value']), 'yes' if v['met'] else 'NO'] for v in result['verdicts']]),
            '']
    lines.append(f"Total {result.get('elapsed_s', 0):.0f} s.")
    return '\n'.join(lines) + '\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--out', type=Path, required=True, help='folder for gpu_check.json and gpu_check.md')
    parser.add_argument('--dry-run', action='store_true', help='tiny batches, sizes and steps (exercise the code)')
    parser.add_argument('--budget-s', type=float, default=420, help='start no row after this many seconds')
    parser.add_argument('--fullres-models', nargs='*', default=['astroformer_small', 'astroformer_base'])
    parser.add_argument('--paper-models', nargs='*', default=[f'astroformer_{i}' for i in range(4)])
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--paper-batch-size', type=int, default=64)
    parser.add_argument('--paper-img-size', type=int, default=256)
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps (they absorb the compilation)')
    parser.add_argument('--steps', type=int, default=10, help='timed steps per row')
    parser.add_argument('--no-compile', dest='compile', action='store_false', help='eager instead of torch.compile')
    parser.add_argument('--fp32', action='store_true', help='no bf16 autocast')
    args = parser.parse_args()
    if args.dry_run:
        args.batch_size, args.paper_batch_size, args.img_size, args.paper_img_size = 2, 1, 16, 64
        args.warmup, args.steps = 1, 2
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: torch sees no CUDA device here; use --device cpu --dry-run to test the script')
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: Dict[str, Any] = dict(command=command_line(), machine=machine_info(str(device)), dry_run=args.dry_run,
                                  budget_s=args.budget_s, compile=args.compile, bf16=not args.fp32, rows={})

    def save() -> None:
        result['elapsed_s'] = time.perf_counter() - started
        if not args.dry_run:  # a dry run's figures mean nothing: no verdicts from them
            result['verdicts'] = verdicts(result['rows'], args.fullres_models)
        write_text_atomic(args.out / 'gpu_check.json', json.dumps(result, indent=2, default=str) + '\n')
        write_text_atomic(args.out / 'gpu_check.md', render(result))

    def guarded(fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  a failing row is reported, the others still run
            traceback.print_exc()
            return dict(error=f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}')

    if device.type == 'cuda':
        result['check'] = guarded(lambda: check_flex_equals_explicit(device))
    else:
        result['check'] = dict(error='skipped: FlexAttention has no backward on CPU')
    save()
    for row in plan(args, device):
        entry = {k: v for k, v in row.items() if k != 'build'}
        if time.perf_counter() - started > args.budget_s:
            entry['skipped'] = f'skipped: over the {args.budget_s:.0f} s budget'
        else:
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            entry.update(guarded(lambda: time_training(row['build'](), row['batch'], row['img_size'], device, args)))
            if device.type == 'cuda' and torch.compiler is not None:
                torch.compiler.reset()  # compiled graphs of a finished row hold memory
        result['rows'][row['key']] = entry
        print(f"{row['key']}: {entry.get('img_s') or entry.get('skipped') or entry.get('error')}", flush=True)
        save()
    print(render(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
