"""``timm-astro train-fits MODEL DATA --stretch SPEC --out DIR``: train on FITS / N-band cutouts, export the stretch.

timm's train.py cannot read these data (``timm_astro.band_training`` says why); this command trains through the same
loop as train.py would (``timm_astro.training``), with a per-band stretch (``--stretch asinh:softening=0.05``) that
is recorded in the export's ``config.json``, so that ``timm-astro evaluate`` / ``predict`` read new data the same
way. DATA is an ImageFolder of splits (``DATA/train/<class>/``, ``DATA/validation/<class>/``), as ``timm-astro
import`` writes (``mirabest`` gives one). DIR receives ``model/`` (the export, reloaded and checked) and
``summary.json`` (history, recipe, data), all at once at the end: an interrupted run leaves nothing.
"""
import argparse
import sys
from typing import Any, Dict, List, Optional

import torch
import yaml

from timm_astro.band_training import BAND_RECIPE, CREATED_BY
from timm_astro.commands import positive_int, run_command
from timm_astro.commands._model_args import band_keys, hdu_key, torch_device
from timm_astro.errors import UserError

PROG = 'timm-astro train-fits'


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument('model', metavar='MODEL', help='a registered timm model name (astroformer_small, ...)')
    parser.add_argument('data', metavar='DATA', help='a folder of splits: DATA/train/<class>/<files>, DATA/validation')
    parser.add_argument('--out', required=True, metavar='DIR', help='run folder to write (new or empty)')
    parser.add_argument('--stretch', required=True, metavar='SPEC',
                        help="per-band stretch to [0, 1]: asinh, linear, or e.g. 'asinh:softening=0.05,"
                             "high_percentile=99.5' (timm_astro.data.stretch); recorded in the export")
    parser.add_argument('--hdu', type=hdu_key, default=None, help='FITS: the HDU holding the image (index or EXTNAME)')
    parser.add_argument('--bands', type=band_keys, default=None, metavar='B1,B2,...',
                        help='FITS: one band per named image HDU, in this order (e.g. G,R,Z)')
    parser.add_argument('--recipe', metavar='FILE', help='a YAML recipe of train.py keys (default: BAND_RECIPE of '
                                                         'timm_astro.band_training)')
    parser.add_argument('--set', dest='sets', nargs='*', default=[], metavar='KEY=VALUE',
                        help='recipe overrides, values read as YAML (lr=5e-4, mean=[0.2,0.3,0.3])')
    parser.add_argument('--epochs', type=positive_int, default=None)
    parser.add_argument('--batch-size', type=positive_int, default=None)
    parser.add_argument('--img-size', type=positive_int, default=None, help="input height and width (default: the "
                                                                            "model's)")
    parser.add_argument('--seed', type=int, default=None, help='random seed (initial weights, order, augmentation)')
    parser.add_argument('--device', type=torch_device, default='cpu', help='torch device (cpu, cuda, cuda:1, ...)')
    parser.add_argument('--workers', type=int, default=0, help='DataLoader worker processes (0: in this process)')
    parser.add_argument('--threads', type=positive_int, default=None, help='torch CPU threads')
    return parser.parse_args(argv)


def build_recipe(args: argparse.Namespace) -> Dict[str, Any]:
    """The recipe: the file (or ``BAND_RECIPE``), then ``--set``, then the dedicated options."""
    if args.recipe is None:
        recipe = dict(BAND_RECIPE)
    else:
        from timm_astro.loading import read_args_yaml  # safe YAML, one-line errors naming the file
        recipe = read_args_yaml(args.recipe)
    for item in args.sets:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise UserError(f'--set {item!r}: expected KEY=VALUE (a train.py key, e.g. lr=5e-4)')
        try:
            recipe[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f'--set {item!r}: the value is not valid YAML ({getattr(e, "problem", e)})') from None
    for key in ('epochs', 'batch_size', 'img_size', 'seed'):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    recipe.pop('input_size', None)  # img_size decides
    return recipe


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import timm
    from timm.data import resolve_model_data_config
    from timm.utils import random_seed

    from timm_astro.band_training import band_model, check_band_recipe, open_band_data, train_bands
    from timm_astro.data.stretch import Stretch
    from timm_astro.hub import export_model
    from timm_astro.loading import load_model
    from timm_astro.outputs import atomic_output_dir, check_output_location, write_json
    from timm_astro.training import train_args

    # --- every check before any work
    try:
        stretch = Stretch.parse(args.stretch)
    except UserError as e:
        raise UserError(f'--stretch {args.stretch}: {e}') from None
    if args.hdu is not None and args.bands is not None:
        raise UserError('give --hdu or --bands, not both')
    if args.workers < 0:
        raise UserError(f'--workers must be at least 0, got {args.workers}')
    recipe = build_recipe(args)
    train = train_args(recipe)
    check_band_recipe(train)
    if recipe.get('model') not in (None, args.model):
        raise UserError(f"the recipe names model {recipe['model']!r} but MODEL is {args.model!r}")
    if not timm.is_model(args.model):
        raise UserError(f'unknown model {args.model!r}; Astroformer models: '
                        f'{", ".join(timm.list_models("astroformer*"))} (or any timm model name)')
    out = check_output_location(args.out, created_by=CREATED_BY)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = open_band_data(args.data, stretch, hdu=args.hdu, bands=args.bands,
                          train_split=recipe.get('train_split', 'train'), val_split=recipe.get('val_split'),
                          progress=lambda text: print(f'{PROG}: {text}', file=sys.stderr, flush=True))
    img_size = recipe.get('img_size')
    if img_size is None:
        img_size = resolve_model_data_config(timm.create_model(args.model, device='meta'))['input_size'][-1]
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise UserError(f'img_size must be a whole number of at least 1 (--img-size or the recipe), got {img_size!r}')
    if train.batch_size > len(data.train):
        raise UserError(f'batch_size {train.batch_size} is more than the {len(data.train)} training files: no batch '
                        f'would be complete; lower --batch-size')
    random_seed(train.seed)  # the initial weights too: the same command trains the same model
    model, config = band_model(args.model, data, img_size, recipe, train)

    print(f'{PROG}: {args.model} on {len(data.train)} training files of {data.root} ({data.bands} band'
          f'{"s" if data.bands != 1 else ""}, {len(data.class_names)} classes: {", ".join(data.label_names)}), '
          f'{len(data.val)} validation, stretch {stretch}, {img_size} px, {train.epochs} epochs, lr {train.lr:.2e}, '
          f'{device}', flush=True)
    result = train_bands(model, data, train, config, device=device, workers=args.workers)

    # --- the export, reloaded and checked; the run folder appears whole
    last = result.history[-1] if result.history else {}
    metrics = {k: last[k] for k in ('val_top1', 'val_loss') if last.get(k) is not None}
    with atomic_output_dir(out, CREATED_BY) as tmp:
        model_dir = export_model(
            result.model, tmp / 'model', label_names=data.label_names, data_config=config,
            metrics={**metrics, 'trained_epochs': len(result.history)},
            train_args={'model': args.model, **recipe, 'lr': train.lr}, dataset=f'{data.root.name} (FITS / bands)')
        reloaded = load_model(f'local-dir:{model_dir}')
        images = torch.rand(4, *config['input_size'])
        with torch.no_grad():
            identical = torch.equal(result.model(images), reloaded(images))
        if not identical or reloaded.pretrained_cfg.get('stretch') != stretch.to_config():
            raise RuntimeError(f'the model reloaded from {model_dir} differs from the one trained (outputs or stretch)')
        summary = {'model': args.model, 'data': str(data.root), 'bands': data.bands, 'classes': data.label_names,
                   'train_files': len(data.train), 'val_files': len(data.val), 'stretch': stretch.to_config(),
                   'fits_hdu': args.hdu, 'fits_bands': list(args.bands) if args.bands else None, 'img_size': img_size,
                   'recipe': recipe, 'lr': train.lr, 'history': result.history, 'reload_identical': identical}
        write_json(tmp / 'summary.json', summary)
    shown = f'; validation top-1 {metrics["val_top1"]:.1f}%' if 'val_top1' in metrics else ''
    print(f'\nexported to {out / "model"} (config.json records the stretch {stretch}; reloaded with identical '
          f'outputs){shown}')
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)

    def body() -> None:
        run(args)
    return run_command(PROG, body)


if __name__ == '__main__':
    sys.exit(main())
