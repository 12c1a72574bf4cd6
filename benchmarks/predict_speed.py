#!/usr/bin/env python3
"""Is the input pipeline the bottleneck of ``timm-astro predict``? Its images/s against the bare model's forward.

For each model (``NAME@SIZE``), side by side in one process and interleaved repeat by repeat:

* ``bare``: the model's forward on a ready batch tensor (``inference_mode``), batch ``--batch-size``: the ceiling;
* ``predict``: ``timm_astro.evaluation.predict.predict_to_csv`` over the images of ``--images`` (decoding, resizing,
  normalising, DataLoader workers, the CSV), same batch and device;
* ``inference.py`` (with ``--timm-scripts``): timm's own ``inference.py`` on the same images through
  ``timm-astro run``, its throughput from its own per-batch timer (startup excluded).

Reports median img/s and the ratio to ``bare`` (the target: predict >= 0.9x), as JSON and markdown.
``--catalogue-sizes 10000 100000`` also runs predict, in a fresh process each, over generated catalogues of those
many small images and reports each process's peak resident memory: flat if the stream keeps memory constant::

    python benchmarks/predict_speed.py --images data/galaxy10_sample --timm-scripts pytorch-image-models \
        --catalogue-sizes 10000 100000
"""
import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import timm_astro  # noqa: E402,F401
from timm_astro.evaluation.predict import open_prediction_inputs, predict_to_csv  # noqa: E402

from benchutils import command_line, create_benchmark_model, machine_info, markdown_table, write_text_atomic  # noqa: E402
from lowdata import parse_model  # noqa: E402


def time_bare(model: torch.nn.Module, batch: torch.Tensor, images: int) -> float:
    """img/s of the forward alone over about ``images`` images."""
    steps = max(1, images // batch.shape[0])
    with torch.inference_mode():
        model(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            model(batch)
        return steps * batch.shape[0] / (time.perf_counter() - start)


def time_predict(model: torch.nn.Module, folder: Path, size: int, batch_size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        summary = predict_to_csv(model, open_prediction_inputs(folder), Path(tmp) / 'p.csv',
                                 data_config={'input_size': (3, size, size), 'crop_pct': 1.0},
                                 batch_size=batch_size, workers=workers, progress=False)
    return summary.images_per_second


def time_inference_py(scripts: Path, model: torch.nn.Module, name: str, num_classes: int, size: int, folder: Path,
                      batch_size: int, workers: int, model_kwargs: Dict[str, Any]) -> float:
    """timm's inference.py through timm-astro run, on ``model``'s weights (inference.py asks for pretrained weights
    without a checkpoint); img/s from its own average batch time (startup excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / 'weights.pth'
        torch.save(model.state_dict(), checkpoint)
        command = [sys.executable, '-m', 'timm_astro', 'run', str(scripts / 'inference.py'), str(folder),
                   '--model', name, '--num-classes', str(num_classes), '--img-size', str(size), '--crop-pct', '1.0',
                   '--checkpoint', str(checkpoint),
                   '--batch-size', str(batch_size), '--workers', str(workers), '--device', 'cpu',
                   '--log-freq', '1', '--results-dir', tmp, '--no-console-results']
        if model_kwargs:
            command += ['--model-kwargs'] + [f'{k}={v}' for k, v in model_kwargs.items()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f'inference.py failed: {proc.stderr[-1500:]}')
    times = [float(m) for m in re.findall(r'Predict: \[\d+/\d+\] Time [\d.]+ \(([\d.]+)\)', proc.stderr + proc.stdout)]
    if not times:
        raise RuntimeError('inference.py printed no batch times')
    return batch_size / times[-1]  # its running average batch time over the whole run


def synthetic_catalogue(cache_dir: Path, count: int, size: int = 24) -> Path:
    """``count`` small noise PNGs in folders of 1,000 (generated once)."""
    import numpy as np
    from PIL import Image
    root = cache_dir / f'catalogue_{count}_{size}px'
    if not (root / '.complete').exists():
        rng = np.random.default_rng(0)
        for i in range(count):
            folder = root / f'{i // 1000:04d}'
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f'{i:07d}.png')
        (root / '.complete').write_text('ok\n')
    return root


_MEMORY_CHILD = """
import resource, sys, tempfile, torch, timm, timm_astro
from timm_astro.evaluation.predict import open_prediction_inputs, predict_to_csv
torch.set_num_threads(1)
model = timm.create_model('resnet18', num_classes=10).eval()
with tempfile.TemporaryDirectory() as tmp:
    s = predict_to_csv(model, open_prediction_inputs(sys.argv[1]), tmp + '/p.csv', batch_size=256, workers=1,
                       data_config={'input_size': (3, 24, 24), 'crop_pct': 1.0}, progress=False)
print(s.predicted, s.images_per_second, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory_check(sizes: List[int], cache_dir: Path) -> List[Dict[str, Any]]:
    """Peak RSS of one predict process per catalogue size (resnet18 at 24 px, so the model costs little)."""
    rows = []
    for count in sizes:
        folder = synthetic_catalogue(cache_dir, count)
        proc = subprocess.run([sys.executable, '-c', _MEMORY_CHILD, str(folder)], capture_output=True, text=True,
                              timeout=7200)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        predicted, img_s, max_rss_kb = proc.stdout.split()[-3:]
        rows.append({'images': int(predicted), 'img_s': float(img_s), 'peak_rss_mb': int(max_rss_kb) / 1024})
        print(f'catalogue of {count}: {float(img_s):.0f} img/s, peak RSS {int(max_rss_kb) / 1024:.0f} MB', flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=Path, required=True, help='a folder of images (any depth)')
    parser.add_argument('--models', nargs='+', default=['astroformer_small@32', 'astroformer_0@64'])
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=1, help='DataLoader workers of predict and inference.py')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--timm-scripts', type=Path, default=None, help="pytorch-image-models checkout (inference.py)")
    parser.add_argument('--catalogue-sizes', nargs='*', type=int, default=[],
                        help='also measure peak memory of predict over generated catalogues of these sizes')
    parser.add_argument('--cache-dir', type=Path, default=Path.home() / '.cache' / 'timm-astro' / 'benchmarks')
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='predict_speed')
    args = parser.parse_args(argv)
    if args.timm_scripts:
        if not (args.timm_scripts / 'inference.py').is_file():
            raise SystemExit(f'--timm-scripts {args.timm_scripts}: no inference.py there (a pytorch-image-models '
                             'checkout is expected)')
        if importlib.util.find_spec('pandas') is None:  # inference.py imports it; timm does not depend on it
            raise SystemExit("--timm-scripts: timm's inference.py needs pandas (pip install pandas)")

    started = time.time()
    count = len(open_prediction_inputs(args.images))
    rows: List[Dict[str, Any]] = []
    for spec in args.models:
        name, kwargs, size = parse_model(spec)
        torch.manual_seed(0)
        model = create_benchmark_model(name, num_classes=args.num_classes, img_size=size, **kwargs).eval()
        batch = torch.randn(args.batch_size, 3, size, size)
        samples: Dict[str, List[float]] = {'bare': [], 'predict': [], 'inference.py': []}
        for repeat in range(args.repeats):
            samples['bare'].append(time_bare(model, batch, count))
            samples['predict'].append(time_predict(model, args.images, size, args.batch_size, args.workers))
            if args.timm_scripts:
                samples['inference.py'].append(time_inference_py(
                    args.timm_scripts, model, name, args.num_classes, size, args.images, args.batch_size, args.workers,
                    kwargs))
            print(f'{spec} repeat {repeat + 1}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in samples.items()
                                                              if v), flush=True)
        bare = statistics.median(samples['bare'])
        for kind, values in samples.items():
            if values:
                rows.append({'model': spec, 'kind': kind, 'img_s': statistics.median(values),
                             'img_s_range': [min(values), max(values)], 'ratio_to_bare': statistics.median(values) / bare,
                             'repeats': values})
    memory = memory_check(args.catalogue_sizes, args.cache_dir) if args.catalogue_sizes else []
    report = {'command': command_line(), 'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
              'wall_time_s': time.time() - started, 'machine': machine_info('cpu'),
              'settings': {'images': str(args.images), 'num_images': count, 'batch_size': args.batch_size,
                           'workers': args.workers, 'repeats': args.repeats}, 'rows': rows, 'memory': memory}
    table = markdown_table(
        ['model', 'pipeline', 'img/s (median)', 'range', 'x bare forward'],
        [[f"`{r['model']}`", r['kind'], f"{r['img_s']:.1f}", f"{r['img_s_range'][0]:.1f}-{r['img_s_range'][1]:.1f}",
          f"{r['ratio_to_bare']:.2f}"] for r in rows])
    m = report['machine']
    markdown = (f"# timm-astro predict: throughput against the bare forward\n\n"
                f"{count} images from `{args.images}`, batch {args.batch_size}, {args.workers} DataLoader worker(s), "
                f"CPU, {args.repeats} interleaved repeats. Machine: {m['cpu_model']} x{m['logical_cpus']}, torch "
                f"{m['torch']}, timm {m['timm']}. Command: `{report['command']}`.\n\n{table}\n"
                f"Target: predict >= 0.90x the bare forward.\n")
    if memory:
        markdown += ('\nPeak resident memory of one `predict` process (resnet18 at 24 px, batch 256, 1 worker) over '
                     'generated catalogues:\n\n' + markdown_table(
                         ['images', 'img/s', 'peak RSS (MB)'],
                         [[f"{m['images']:,}", f"{m['img_s']:.0f}", f"{m['peak_rss_mb']:.0f}"] for m in memory]))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out_dir / f'{args.name}.json', json.dumps(report, indent=1))
    write_text_atomic(args.out_dir / f'{args.name}.md', markdown)
    print(markdown)
    return report


if __name__ == '__main__':
    main()
