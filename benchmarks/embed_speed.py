#!/usr/bin/env python3
"""Is the input pipeline the bottleneck of ``timm-astro embed``? Its images/s against the bare pre-logits forward.

For each model (``NAME@SIZE``), side by side in one process and interleaved repeat by repeat, as
``predict_speed.py`` measures predict:

* ``bare``: ``forward_head(forward_features(x), pre_logits=True)`` on a ready batch tensor (``inference_mode``),
  batch ``--batch-size``: the ceiling;
* ``embed``: ``timm_astro.evaluation.embed.embed_to_folder`` over ``--images`` (a folder, list or catalogue CSV:
  decoding, resizing, normalising, DataLoader workers, the streamed partial file, the .npy and ids.csv built at the
  end), same batch and device; its img/s counts the whole run, the folder's building included.

Reports median img/s and the ratio to ``bare`` (the target: embed >= 0.9x), as JSON and markdown::

    python benchmarks/embed_speed.py --images catalogue.csv --images-root DATA_DIR --models resnet18@128 --threads 1
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import timm_astro  # noqa: E402,F401
from timm_astro.evaluation.embed import embed_to_folder, pooled_features  # noqa: E402
from timm_astro.evaluation.predict import open_prediction_inputs  # noqa: E402

from benchutils import command_line, create_benchmark_model, machine_info, markdown_table, write_text_atomic  # noqa: E402
from lowdata import parse_model  # noqa: E402


def time_bare(model: torch.nn.Module, batch: torch.Tensor, images: int) -> float:
    """img/s of the pre-logits forward alone over about ``images`` images."""
    steps = max(1, images // batch.shape[0])
    with torch.inference_mode():
        pooled_features(model, batch)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            pooled_features(model, batch)
        return steps * batch.shape[0] / (time.perf_counter() - start)


def time_embed(model: torch.nn.Module, source: Path, catalogue: Dict[str, Any], size: int, batch_size: int,
               workers: int) -> float:
    """img/s of a whole embed run, from its first batch to the finished folder."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = open_prediction_inputs(source, catalogue)
        start = time.perf_counter()
        summary = embed_to_folder(model, inputs, Path(tmp) / 'emb', data_config={'input_size': (3, size, size),
                                                                                  'crop_pct': 1.0},
                                  batch_size=batch_size, workers=workers, progress=False, log=lambda m: None)
        return summary.predicted / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=Path, required=True, help='a folder of images, a list or a catalogue CSV')
    parser.add_argument('--images-root', type=Path, default=None, help="a catalogue's image folder")
    parser.add_argument('--models', nargs='+', default=['resnet18@128'])
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=1, help='DataLoader workers of embed')
    parser.add_argument('--threads', type=int, default=None, help='torch threads of the forward (default: torch)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='embed_speed')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    catalogue = {'root': args.images_root} if args.images.suffix.lower() == '.csv' else None
    count = len(open_prediction_inputs(args.images, catalogue))
    rows: List[Dict[str, Any]] = []
    for spec in args.models:
        name, kwargs, size = parse_model(spec)
        torch.manual_seed(0)
        model = create_benchmark_model(name, num_classes=10, img_size=size, **kwargs).eval()
        batch = torch.randn(args.batch_size, 3, size, size)
        samples: Dict[str, List[float]] = {'bare': [], 'embed': []}
        for repeat in range(args.repeats):
            samples['bare'].append(time_bare(model, batch, count))
            samples['embed'].append(time_embed(model, args.images, catalogue, size, args.batch_size, args.workers))
            print(f'{spec} repeat {repeat + 1}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in samples.items()),
                  flush=True)
        bare = statistics.median(samples['bare'])
        for kind, values in samples.items():
            rows.append({'model': spec, 'kind': kind, 'img_s': statistics.median(values),
                         'img_s_range': [min(values), max(values)], 'ratio_to_bare': statistics.median(values) / bare,
                         'repeats': values})
    report = {'command': command_line(), 'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
              'wall_time_s': time.time() - started, 'machine': machine_info('cpu'),
              'settings': {'images': args.images.name, 'num_images': count, 'batch_size': args.batch_size,
                           'workers': args.workers, 'threads': torch.get_num_threads(), 'repeats': args.repeats},
              'rows': rows}
    table = markdown_table(
        ['model', 'pipeline', 'img/s (median)', 'range', 'x bare forward'],
        [[f"`{r['model']}`", r['kind'], f"{r['img_s']:.1f}", f"{r['img_s_range'][0]:.1f}-{r['img_s_range'][1]:.1f}",
          f"{r['ratio_to_bare']:.2f}"] for r in rows])
    m = report['machine']
    markdown = (f"# timm-astro embed: throughput against the bare pre-logits forward\n\n"
                f"{count} images from `{args.images.name}`, batch {args.batch_size}, {args.workers} DataLoader "
                f"worker(s), {torch.get_num_threads()} torch thread(s), CPU, {args.repeats} interleaved repeats. "
                f"Machine: {m['cpu_model']} x{m['logical_cpus']}, torch {m['torch']}, timm {m['timm']}. "
                f"Command: `{report['command']}`.\n\n{table}\n"
                f"Target: embed >= 0.90x the bare forward (embed's time includes building the .npy and ids.csv).\n")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out_dir / f'{args.name}.json', json.dumps(report, indent=1))
    write_text_atomic(args.out_dir / f'{args.name}.md', markdown)
    print(markdown)
    return report


if __name__ == '__main__':
    main()
