"""Arguments shared by the commands that load a model and feed it images (evaluate, predict)."""
import argparse
import math
import sys
from typing import Any, Callable, Dict

from timm_astro.commands import positive_int
from timm_astro.errors import UserError

__all__ = ['add_model_arguments', 'add_data_config_arguments', 'data_config_overrides', 'load_model_from_args',
           'reader_options']

# the names timm's transforms accept (timm.data.transforms.str_to_interp_mode)
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'box', 'hamming', 'lanczos')


def _number(value: str, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float, or argparse's one-line error saying what was ``expected`` (NaN and words fail ``ok``)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not ok(number):
        raise argparse.ArgumentTypeError(f'expected {expected}, got {value!r}')
    return number


def crop_fraction(value: str) -> float:
    """argparse type: a center-crop fraction in (0, 1]; timm would run 0 as its default 0.875 and divide by it."""
    return _number(value, lambda x: 0 < x <= 1, 'a fraction in (0, 1] (1: no crop)')


def positive_float(value: str) -> float:
    """argparse type: a finite number above 0 (a standard deviation that images are divided by)."""
    return _number(value, lambda x: math.isfinite(x) and x > 0, 'a finite number above 0')


def finite_float(value: str) -> float:
    """argparse type: a finite number (a mean that is subtracted)."""
    return _number(value, math.isfinite, 'a finite number')


def torch_device(value: str) -> str:
    """argparse type: a device torch knows (cpu, cuda, cuda:1, mps, ...), and one this machine has."""
    import torch
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f'expected a torch device such as cpu, cuda or cuda:1, got {value!r}') \
            from None
    if device.type == 'cuda':
        count = torch.cuda.device_count()
        if not torch.cuda.is_available() or (device.index or 0) >= count:
            have = f'this machine has {count} CUDA devices' if count else 'no CUDA GPU is available here'
            raise argparse.ArgumentTypeError(f'{value!r}: {have}; use --device cpu')
    elif device.type == 'mps' and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f'{value!r}: MPS is not available here; use --device cpu')
    return value


def hdu_key(value: str):
    """argparse type: a FITS HDU by index (a whole number) or EXTNAME."""
    return int(value) if value.strip().isdigit() else value.strip()


def band_keys(value: str) -> tuple:
    """argparse type: FITS HDUs, comma-separated (indices or EXTNAMEs)."""
    keys = tuple(hdu_key(v) for v in value.split(',') if v.strip())
    if not keys:
        raise argparse.ArgumentTypeError(f'expected HDU names or indices separated by commas, got {value!r}')
    return keys


def reader_options(args: argparse.Namespace) -> Dict[str, Any]:
    """``stretch``, ``hdu`` and ``bands`` for ``timm_astro.data.images.reader_for_model`` (an impossible
    ``--stretch`` is one line, before the model loads)."""
    from timm_astro.data.stretch import Stretch
    stretch = None
    if args.stretch is not None:
        try:
            stretch = Stretch.parse(args.stretch)
        except UserError as e:
            raise UserError(f'--stretch {args.stretch}: {e}') from None
    if args.hdu is not None and args.bands is not None:
        raise UserError('give --hdu or --bands, not both')
    return {'stretch': stretch, 'hdu': args.hdu, 'bands': args.bands}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', metavar='MODEL',
                        help='a registered model name (with --checkpoint), a train.py checkpoint, local-dir:PATH or '
                             'hf-hub:ORG/NAME; any timm model, not only ours')
    parser.add_argument('--checkpoint', default=None, help='weights for a model name: a train.py checkpoint or a '
                                                           'state dict')
    parser.add_argument('--num-classes', type=positive_int, default=None,
                        help="classes, for a model name without weights (with weights: must equal their head's)")
    parser.add_argument('--no-ema', action='store_true', help="a checkpoint's raw weights even if it has EMA ones")
    parser.add_argument('--device', type=torch_device, default='cpu', help='torch device (cpu, cuda, cuda:1, ...)')


def add_data_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('preprocessing (default: the model\'s own, timm.data.resolve_model_data_config)')
    group.add_argument('--img-size', type=positive_int, default=None, help='input height and width')
    group.add_argument('--crop-pct', type=crop_fraction, default=None, help='center crop fraction, in (0, 1]')
    group.add_argument('--interpolation', choices=INTERPOLATIONS, default=None, help='resize interpolation')
    group.add_argument('--mean', type=finite_float, nargs='+', default=None, metavar='M',
                       help='one per band (R G B for colour images), or one for all')
    group.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='S',
                       help='one per band, or one for all')
    group.add_argument('--stretch', default=None, metavar='SPEC',
                       help="for a model that records none: how FITS / 16-bit / float data become input, per band, "
                            "e.g. asinh, linear, 'asinh:softening=0.05,low_percentile=1,high_percentile=99.5' "
                            "(timm_astro.data.stretch); a model trained with one applies its own")
    group.add_argument('--hdu', type=hdu_key, default=None, metavar='HDU',
                       help='FITS: the HDU holding the image (index or EXTNAME; default: the first image)')
    group.add_argument('--bands', type=band_keys, default=None, metavar='B1,B2,...',
                       help='FITS: one band per named image HDU, in this order (e.g. G,R,Z)')
    parser.add_argument('--batch-size', type=positive_int, default=64)
    parser.add_argument('--workers', type=int, default=2, help='DataLoader worker processes (0: in this process)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def data_config_overrides(args: argparse.Namespace, in_chans: int = 3) -> Dict[str, Any]:
    """The preprocessing options given on the command line, as a timm data config fragment."""
    config: Dict[str, Any] = {}
    if args.img_size is not None:
        config['input_size'] = (in_chans, args.img_size, args.img_size)
    for key in ('crop_pct', 'interpolation', 'mean', 'std'):
        value = getattr(args, key)
        if isinstance(value, list) and len(value) not in (1, in_chans):
            raise UserError(f'--{key} has {len(value)} values; the model takes {in_chans} bands: give {in_chans}, or '
                            f'one for all')
        if value is not None:
            config[key] = tuple(value) if isinstance(value, list) else value
    return config


def load_model_from_args(args: argparse.Namespace, prog: str):
    """The model the arguments name; a bare model name without ``--checkpoint`` is loaded with a warning, since its
    weights are random (nothing here downloads pretrained weights) and its figures are those of an untrained model.
    A model trained on votes comes with its task and tree (``timm_astro.votes_model.is_votes_model``)."""
    import timm
    from timm_astro.votes_model import load_votes_model as load_model
    if args.workers < 0:
        raise UserError(f'--workers must be at least 0, got {args.workers}')
    kwargs = {} if args.num_classes is None else {'num_classes': args.num_classes}
    model = load_model(args.model, args.checkpoint, use_ema=not args.no_ema, **kwargs)
    if args.checkpoint is None and timm.is_model(args.model):
        print(f'{prog}: warning: {args.model} without --checkpoint has random weights: these are the outputs of an '
              f'untrained model', file=sys.stderr)
    return model
