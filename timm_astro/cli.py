"""The ``timm-astro`` command: one entry point, one sub-command per module of ``timm_astro.commands``.

Each sub-command's module exposes ``main(argv) -> int``; it is imported only when called, so a missing optional
dependency only affects its own tool.
"""
import importlib
import sys
from typing import Dict, List, Optional, Tuple

# name -> (module in timm_astro.commands, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    'demo': ('demo', 'train astroformer_small on synthetic galaxies, end to end, no downloads'),
    'run': ('run', 'run a timm script (train.py, validate.py, ...) with the models registered'),
    'galaxy10': ('galaxy10', 'turn the published Galaxy10 HDF5 file into an ImageFolder'),
    'import': ('import_images', 'turn your copy of a public set of real galaxy images into an ImageFolder'),
    'train-votes': ('train_votes', 'train on Galaxy Zoo volunteer votes (Dirichlet-multinomial loss)'),
    'train-fits': ('train_fits', 'train on FITS / N-band cutouts with a stretch recorded in the export'),
    'evaluate': ('evaluate', 'per-class metrics, calibration and D4 test-time symmetry on a labelled split'),
    'predict': ('predict', 'classify a folder, a list of paths or an HDF5 catalogue into a CSV'),
    'embed': ('embed', "each image's pooled features (and nearest neighbours) for similarity search"),
    'export': ('export', 'turn a train.py checkpoint into a Hub-ready folder'),
    'push': ('push', 'upload a checkpoint or exported folder to the Hugging Face Hub'),
    'models': ('models', 'print the model table (params, GMACs, default input size)'),
    'inspect': ('inspect', 'draw the learned kernels W and where the transformer stage attends'),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ['usage: timm-astro COMMAND [ARGS...]', '', 'commands:']
    lines += [f'  {name.ljust(width)}  {text}' for name, (_, text) in COMMANDS.items()]
    lines += ['', "'timm-astro COMMAND --help' describes each command."]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"timm-astro: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f'timm_astro.commands.{COMMANDS[name][0]}')
    return int(module.main(rest) or 0)


if __name__ == '__main__':
    sys.exit(main())
