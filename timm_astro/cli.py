"""The ``timm-astro`` command: one entry point, one sub-command per tool.

Each sub-command lives in its own module and exposes ``main(argv) -> int``; it is imported only when
called, so ``timm-astro --help`` stays fast and a missing optional dependency only affects its own tool.
"""
import importlib
import sys
from typing import Dict, List, Optional, Tuple

# name -> (module:function, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    'demo': ('timm_astro.demo:main', 'train astroformer_small on synthetic galaxies, end to end, no downloads'),
    'run': ('timm_astro.run:main', "run a timm script (train.py, validate.py, ...) with the models registered"),
    'galaxy10': ('timm_astro.data.galaxy10:main', 'turn the published Galaxy10 HDF5 file into an ImageFolder'),
    'export': ('timm_astro.hub:export_main', 'turn a train.py checkpoint into a Hub-ready folder'),
    'push': ('timm_astro.hub:push_main', 'upload a checkpoint or exported folder to the Hugging Face Hub'),
    'models': ('timm_astro.models.table:main', 'print the model table (params, GMACs, default input size)'),
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
    module_name, func_name = COMMANDS[name][0].split(':')
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == '__main__':
    sys.exit(main())
