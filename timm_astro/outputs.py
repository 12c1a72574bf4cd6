"""Writing outputs so that nothing is left half-written: one mechanism for every command that writes.

* ``atomic_output_dir``: build a folder beside its destination and rename it into place only when complete. The
  destination must be new, empty, or (with ``overwrite``) an earlier output of ours: a folder holding the marker
  file ``.timm-astro.json`` that every such folder gets. Anything else is refused, never replaced. Partial folders
  left by a run that was killed (SIGKILL, power loss) are recognised by their own marker and removed by the next
  run for the same destination; partial folders of a run still alive, and anything that is not ours, are left alone.
* ``atomic_file``: the same for one file (a CSV, a JSON report): written to a temporary file, renamed into place.
* ``check_output_location``: the checks on a destination alone, for commands that validate before any work.

Every failure is a ``UserError`` naming the path, what was wrong and what is expected.
"""
import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, IO, Iterator, List, Optional, Union

from timm_astro.errors import OutputExistsError, UserError
from timm_astro.version import __version__

__all__ = [
    'OUTPUT_MARKER', 'atomic_output_dir', 'atomic_file', 'check_output_location', 'is_own_output',
    'remove_stale_partials', 'write_json',
]

PathLike = Union[str, os.PathLike]
OUTPUT_MARKER = '.timm-astro.json'  # in every finished output folder: which command wrote it
PARTIAL_MARKER = '.timm-astro-partial.json'  # in a folder under construction: whose it is (host, pid)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented UTF-8 JSON with a final newline (deterministic: no timestamps are added)."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')


def _read_json(path: Path) -> Optional[dict]:
    try:
        value = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_own_output(folder: PathLike, created_by: Optional[str] = None) -> bool:
    """True if ``folder`` was written by timm-astro (by the command ``created_by``, if given)."""
    marker = _read_json(Path(folder) / OUTPUT_MARKER)
    return marker is not None and 'created_by' in marker and created_by in (None, marker['created_by'])


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return 'no space left on the device'
    if e.errno == errno.EROFS:
        return 'the file system is read-only'
    if isinstance(e, PermissionError):
        return 'permission denied'
    return e.strerror or str(e)


def check_output_location(
        out: PathLike,
        *,
        overwrite: bool = False,
        created_by: Optional[str] = None,
        is_own: Optional[Callable[[Path], bool]] = None,
        kind: str = 'folder',
) -> Path:
    """Check that ``out`` can be written, before any work starts; returns it as a Path.

    ``out`` must be absent, or an empty folder, or (``overwrite``) an earlier output of ``created_by`` (by its
    marker, or ``is_own(out)``); ``kind='file'`` accepts an existing file only with ``overwrite``. Every existing
    ancestor must be a folder, and the nearest one writable.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if kind == 'file':
            if out.is_dir():
                raise UserError(f'{out}: is a folder; expected a file name to write')
            if not overwrite:
                raise OutputExistsError(f'{out}: exists; pass --overwrite to replace it, or choose another name')
        else:
            if not out.is_dir():
                raise OutputExistsError(
                    f'{out}: exists and is a file, not a folder; choose a new or empty output folder')
            if any(out.iterdir()):
                own = is_own_output(out, created_by) or (is_own is not None and is_own(out))
                if not overwrite:
                    raise OutputExistsError(
                        f'{out}: folder is not empty; pass --overwrite to replace an earlier output, or choose another '
                        f'folder')
                if not own:
                    what = f'an earlier output of {created_by!r}' if created_by else 'an earlier timm-astro output'
                    raise OutputExistsError(
                        f'{out}: not empty and not {what} (no {OUTPUT_MARKER} of ours); --overwrite only replaces '
                        f'such outputs: remove or rename it yourself')
    ancestor = out.parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise UserError(f'{out}: cannot be created, {ancestor} is a broken symbolic link')
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f'{out}: cannot be created, {ancestor} is a file, not a folder; choose another location')
    if not os.access(ancestor, os.W_OK | os.X_OK):
        reason = 'the file system is read-only' if _is_read_only(ancestor) else 'permission denied'
        raise UserError(f'{out}: cannot be created in {ancestor} ({reason}); choose a location you can write to')
    return out


def _is_read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _partial_prefix(out: Path) -> str:
    return f'.{out.name}.partial-'


def remove_stale_partials(out: PathLike, log: Callable[[str], None] = None) -> List[Path]:
    """Remove partial folders (and files) for ``out`` left by runs of ours that died; returns what was removed.

    A partial is ours if it carries our partial marker naming this host and a process that no longer exists.
    """
    out = Path(out)
    removed: List[Path] = []
    if not out.parent.is_dir():
        return removed
    host = socket.gethostname()
    for candidate in out.parent.iterdir():
        if not candidate.name.startswith(_partial_prefix(out)):
            continue
        marker = _read_json(candidate / PARTIAL_MARKER) if candidate.is_dir() else None
        if marker is None and candidate.is_file():  # a partial file: its marker is a sibling
            marker = _read_json(candidate.with_name(candidate.name + '.owner'))
        if not marker or marker.get('host') != host or not isinstance(marker.get('pid'), int):
            continue
        if _pid_alive(marker['pid']):
            continue
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                candidate.unlink()
            with contextlib.suppress(OSError):
                candidate.with_name(candidate.name + '.owner').unlink()
        removed.append(candidate)
        (log or _stderr)(f'removed {candidate}, left by an earlier run (process {marker["pid"]}) that was killed')
    return removed


def _stderr(message: str) -> None:
    print(f'timm-astro: note: {message}', file=sys.stderr)


def _owner() -> dict:
    return {'host': socket.gethostname(), 'pid': os.getpid()}


def _wrap_os_error(e: OSError, out: Path) -> UserError:
    where = e.filename or out
    return UserError(f'cannot write {out}: {where}: {_os_reason(e)}')


def _replace(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only afterwards."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f'.{out.name}.old-{secrets.token_hex(4)}')
            os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


@contextlib.contextmanager
def atomic_output_dir(
        out: PathLike,
        created_by: str,
        *,
        overwrite: bool = False,
        is_own: Optional[Callable[[Path], bool]] = None,
        marker_info: Optional[dict] = None,
        log: Optional[Callable[[str], None]] = None,
) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``out``, on any failure it is removed.

    Args:
        out: The folder to write.
        created_by: The command writing it (``'timm-astro evaluate'``), recorded in its marker.
        overwrite: Replace ``out`` if it is an earlier output of ``created_by``.
        is_own: Also recognise earlier outputs without our marker (outputs of older versions).
        marker_info: Extra JSON-serialisable facts for the marker (no timestamps: outputs stay reproducible).
        log: Where notes go (removed stale partials); stderr by default.
    """
    out = check_output_location(out, overwrite=overwrite, created_by=created_by, is_own=is_own)
    remove_stale_partials(out, log)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f'{_partial_prefix(out)}{secrets.token_hex(4)}')
        tmp.mkdir()
    except OSError as e:
        raise _wrap_os_error(e, out) from None
    try:
        write_json(tmp / PARTIAL_MARKER, _owner())
        yield tmp
        write_json(tmp / OUTPUT_MARKER, {'created_by': created_by, 'version': __version__, **(marker_info or {})})
        (tmp / PARTIAL_MARKER).unlink()
        _replace(tmp, out)
    except OSError as e:
        raise _wrap_os_error(e, out) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(
        path: PathLike,
        mode: str = 'w',
        *,
        overwrite: bool = True,
        newline: Optional[str] = None,
) -> Iterator[IO]:
    """Yield a file object for ``path``; it replaces ``path`` only if the block completes."""
    path = check_output_location(path, overwrite=overwrite, kind='file')
    remove_stale_partials(path)
    tmp = path.with_name(f'{_partial_prefix(path)}{secrets.token_hex(4)}')
    owner = tmp.with_name(tmp.name + '.owner')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(owner, _owner())
        encoding = None if 'b' in mode else 'utf-8'
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise _wrap_os_error(e, path) from None
    finally:
        for leftover in (tmp, owner):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
