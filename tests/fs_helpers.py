"""Real full and read-only file systems for tests: a small tmpfs mounted where the test runs as root.

Permission bits do not stop root, so an "unwritable" location is made with a read-only mount. Where ``mount`` is not
allowed (not root, no CAP_SYS_ADMIN) the context manager yields None and the test skips, saying so; the same messages
are also checked with a write call patched to fail (tests/test_outputs.py, tests/test_galaxy10.py).
"""
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

__all__ = ['small_filesystem', 'NO_MOUNT']

NO_MOUNT = 'mounting a small tmpfs needs root with CAP_SYS_ADMIN, which this run does not have'


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int = 64, read_only: bool = False) -> Iterator[Optional[Path]]:
    """A tmpfs of ``size_kb`` at ``path`` (read-only if asked), unmounted afterwards; None where it cannot be made."""
    path.mkdir(parents=True, exist_ok=True)
    options = f'size={size_kb}k' + (',ro' if read_only else '')
    if os.geteuid() != 0 or shutil.which('mount') is None or subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], capture_output=True)
