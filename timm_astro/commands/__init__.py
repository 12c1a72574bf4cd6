"""The ``timm-astro`` commands, one thin module per command.

A command parses its arguments, calls the library and turns the errors a user can fix into one line on stderr and
exit code 2 (``run_command``); anything unexpected keeps its traceback. Imports point one way: commands import the
library (``timm_astro.models``, ``data``, ``hub``, ``evaluation``, ...), the library never imports a command.
"""
import argparse
import os
import signal
import sys
import threading
from typing import Callable, Optional

from timm_astro.errors import UserError, describe_os_error

__all__ = ['run_command', 'say_error', 'positive_int']


def positive_int(value: str) -> int:
    """argparse type: a whole number of at least 1 (a count of classes, workers, ...)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number of at least 1, got {value!r}')
    return number


def say_error(prog: str, message: str, secret: Optional[str] = None) -> int:
    """Print ``prog: error: message`` as one line (a secret such as a token masked); returns exit code 2."""
    if secret:
        message = message.replace(secret, '***')
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def run_command(prog: str, func: Callable[[], Optional[int]], secret: Optional[str] = None) -> int:
    """Run a command's body (``func``, returning an exit code or None for 0); expected failures become one line
    ``prog: error: ...`` on stderr and a non-zero exit code, with ``secret`` (a token) shown as ``***``.

    An interrupt says that nothing was left half-written, unless the code interrupted re-raised it with its own
    message: ``predict`` keeps its partial CSV for ``--resume`` and says where it is.
    """
    restore_sigterm = None
    if threading.current_thread() is threading.main_thread():
        # a polite kill (SIGTERM) unwinds like Ctrl-C, so partial outputs are removed either way
        restore_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return int(func() or 0)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM; a message if the code interrupted kept a partial output
        say_error(prog, f"interrupted; {str(e) or 'nothing was left half-written'}", secret)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UserError as e:
        return say_error(prog, str(e), secret)
    except OSError as e:  # a file the user named, a full disk, ...; anything else keeps its traceback
        return say_error(prog, f'{e.filename}: {describe_os_error(e)}' if e.filename else describe_os_error(e), secret)
    finally:
        if restore_sigterm is not None:
            signal.signal(signal.SIGTERM, restore_sigterm)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
