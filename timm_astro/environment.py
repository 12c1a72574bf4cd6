"""Checks of the environment that must run before timm is imported (standard library only).

huggingface_hub reads ``HF_ENDPOINT`` when it is imported, and timm imports it: an unusable value would fail inside
``import timm`` with a traceback no command can catch. ``check_environment`` runs first, from
``timm_astro/__init__.py``: it raises a ``UserError`` naming the variable, or, in the ``timm-astro`` command
itself, prints that one line and exits with code 2.
"""
import os
import sys
import urllib.parse
from typing import Optional

from timm_astro.errors import UserError

__all__ = ['hub_endpoint_problem', 'check_environment']


def hub_endpoint_problem(url: str) -> Optional[str]:
    """Why ``url`` cannot serve as ``HF_ENDPOINT``, or None if it can."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ('http', 'https') and parts.hostname and parts.port != 0:
            return None
        problem = 'expected http(s)://HOST[:PORT]'
    except ValueError as e:  # a port out of range, a malformed host
        problem = str(e)
    return f'HF_ENDPOINT={url!r} is not a usable URL ({problem}); expected e.g. https://huggingface.co'


def _is_the_command() -> bool:
    """True in the ``timm-astro`` console script and under ``python -m timm_astro``."""
    if os.path.basename(sys.argv[0] if sys.argv else '') == 'timm-astro':
        return True
    return any(a == '-m' and b.split('.')[0] == 'timm_astro' for a, b in zip(sys.orig_argv, sys.orig_argv[1:]))


def check_environment() -> None:
    endpoint = os.environ.get('HF_ENDPOINT')
    problem = hub_endpoint_problem(endpoint) if endpoint else None
    if problem is None:
        return
    if _is_the_command():
        print(f'timm-astro: error: {problem}', file=sys.stderr)
        sys.exit(2)
    raise UserError(problem)
