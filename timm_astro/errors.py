"""The one exception type for problems with a user's input, shared by the library and the commands.

Library functions raise ``UserError`` (or a subclass) for anything the user can fix: a bad argument, a file that is
missing, unreadable or of the wrong kind, an output folder that is in the way. The message names what was wrong and
what is expected; the commands print it as one line, without a traceback (``timm_astro.commands.run_command``).
"""
import errno

__all__ = ['UserError', 'MissingDependency', 'OutputExistsError', 'describe_os_error']


class UserError(ValueError):
    """A problem with the user's input, worded for the user: what was wrong and what is expected."""


class MissingDependency(UserError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


class OutputExistsError(UserError, FileExistsError):
    """An output is in the way: it exists and may not (or, not being ours, cannot) be replaced."""


def describe_os_error(e: OSError) -> str:
    """What went wrong and what to do, for the OS errors a user can fix (a full disk, a read-only location)."""
    if e.errno == errno.ENOSPC:
        return 'no space left on the device; free some space or choose another location'
    if e.errno == errno.EROFS:
        return 'the file system is read-only; choose another location'
    if isinstance(e, PermissionError):
        return 'permission denied; choose a location you can write to (or read)'
    return e.strerror or str(e)
