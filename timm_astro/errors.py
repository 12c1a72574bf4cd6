"""The one exception type for problems with a user's input, shared by the library and the commands.

Library functions raise ``UserError`` (or a subclass) for anything the user can fix: a bad argument, a file that is
missing, unreadable or of the wrong kind, an output folder that is in the way. The message names what was wrong and
what is expected; the commands print it as one line, without a traceback (``timm_astro.commands.run_command``).
"""

__all__ = ['UserError', 'MissingDependency', 'OutputExistsError']


class UserError(ValueError):
    """A problem with the user's input, worded for the user: what was wrong and what is expected."""


class MissingDependency(UserError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


class OutputExistsError(UserError, FileExistsError):
    """An output is in the way: it exists and may not (or, not being ours, cannot) be replaced."""
