"""Writing outputs so that nothing is left half-written: one mechanism for every command that writes.

* ``atomic_output_dir``: build a folder beside its destination and rename it into place only when complete. The
  destination must be new, empty, or (with ``overwrite``) an earlier output of ours: a folder holding the marker
  file ``.timm-astro.json`` that every such folder gets. Anything else is refused, never replaced. Partial folders
  left by a run that was killed (SIGKILL, power loss) are recognised by their own marker and removed by the next
  run for the same destination; partial folders of a run still alive, and anything that is not ours, are left alone.
* ``atomic_file``: the same for one file (a CSV, a JSON report): written to a temporary file, renamed into place.
* ``check_output_location``: the checks on a destination alone, for commands that validate before any work.
* ``output_lock``: an exclusive lock on a destination for a whole run, so that two runs never write one output
  (``predict`` appends to a partial file for minutes or hours: a second run on it would interleave rows).

Every failure is a ``UserError`` naming the path, what was wrong and what is expected.
"""
import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, IO, Iterator, List, Optional, Union

from timm_astro.errors import OutputExistsError, UserError, describe_os_error
from timm_astro.version import __version__

__all__ = [
    'OUTPUT_MARKER', 'atomic_output_dir', 'atomic_file', 'check_output_location', 'is_own_output', 'output_lock',
    'make_parent_folders', 'remove_made_folders', 'remove_stale_partials', 'write_json',
]

PathLike = Union[str, os.PathLike]
OUTPUT_MARKER = '.timm-astro.json'  # in every finished output folder: which command wrote it
PARTIAL_MARKER = '.timm-astro-partial.json'  # in a folder under construction: whose it is (host, pid, start)
OWNER_SUFFIX = '.owner'  # beside a file under construction: the same marker


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


def check_output_location(
        out: PathLike,
        *,
        overwrite: bool = False,
        created_by: Optional[str] = None,
        kind: str = 'folder',
) -> Path:
    """Check that ``out`` can be written, before any work starts; returns it as a Path.

    ``out`` must be absent, or an empty folder, or (``overwrite``) an earlier output of ``created_by`` (by its
    marker); ``kind='file'`` accepts an existing file only with ``overwrite``. Every existing
    ancestor must be a folder, and the nearest one writable.
    """
    out = Path(out)
    if out.name in ('', '.', '..'):
        raise UserError(f'{str(out)!r}: expected the name of a {kind} to write, not an existing location itself')
    if out.is_symlink() and not out.exists():
        raise OutputExistsError(f'{out}: is a broken symbolic link; remove it or choose another name')
    if out.exists():
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
                if not overwrite:
                    raise OutputExistsError(
                        f'{out}: folder is not empty; pass --overwrite to replace an earlier output, or choose another '
                        f'folder')
                if not is_own_output(out, created_by):
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
        reason = 'the file system is read-only' if os.statvfs(ancestor).f_flag & os.ST_RDONLY else 'permission denied'
        raise UserError(f'{out}: cannot be created in {ancestor} ({reason}); choose a location you can write to')
    return out


def _start_time(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks since boot, Linux), so that a reused pid is not taken for it."""
    try:
        return int(Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_dead_run_of_ours(marker: Optional[dict]) -> bool:
    """The marker names a run on this host whose process has ended (or whose pid now belongs to another one)."""
    if not marker or marker.get('host') != socket.gethostname() or not isinstance(marker.get('pid'), int):
        return False
    try:
        os.kill(marker['pid'], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        pass
    started = marker.get('started')
    return started is not None and _start_time(marker['pid']) not in (None, started)


def _partial_prefix(out: Path) -> str:
    return f'.{out.name}.partial-'


def _remove(path: Path) -> None:
    """Remove a file or folder if it is there (a symbolic link itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _note(message: str) -> None:
    print(f'timm-astro: note: {message}', file=sys.stderr)


def remove_stale_partials(out: PathLike, log: Callable[[str], None] = _note) -> List[Path]:
    """Remove partial folders (and files) for ``out`` left by runs of ours that died; returns what was removed.

    A partial is ours if it carries our partial marker naming this host and a process that no longer exists;
    anything else beside ``out`` (another run still alive, another host's, a stranger's) is left alone.
    """
    out = Path(out)
    removed: List[Path] = []
    if not out.parent.is_dir():
        return removed
    for candidate in sorted(out.parent.iterdir()):
        if not candidate.name.startswith(_partial_prefix(out)):
            continue
        if candidate.is_dir():  # a folder under construction holds its marker
            partial, marker_file = candidate, candidate / PARTIAL_MARKER
        elif candidate.name.endswith(OWNER_SUFFIX):  # a file under construction has it beside (the file may be gone)
            partial, marker_file = candidate.with_name(candidate.name[:-len(OWNER_SUFFIX)]), candidate
        else:  # a file under construction: removed with its owner file
            continue
        marker = _read_json(marker_file)
        if _is_dead_run_of_ours(marker):
            _remove(partial)
            _remove(marker_file)
            removed.append(partial)
            log(f'removed {partial}, left by an earlier run (process {marker["pid"]}) that was killed')
    return removed


def _owner() -> dict:
    return {'host': socket.gethostname(), 'pid': os.getpid(), 'started': _start_time(os.getpid())}


def _wrap_os_error(e: OSError, out: Path, tmp: Path) -> UserError:
    """``out: cannot be written: why; what to do``, naming the file that failed unless it was a temporary one."""
    where = str(e.filename) if e.filename else ''
    shown = f' ({where})' if where and where != str(out) and not where.startswith(str(tmp)) else ''
    return UserError(f'{out}: cannot be written{shown}: {describe_os_error(e)}; nothing was left half-written')


def make_parent_folders(out: PathLike) -> List[Path]:
    """Make the missing folders above ``out``; returns those this call made, deepest first, for
    ``remove_made_folders`` after a failure. A folder another run makes meanwhile is theirs, not in the list."""
    created: List[Path] = []
    for folder in reversed([folder for folder in Path(out).parents if not folder.exists()]):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError:  # those made so far go too: a failure leaves no empty folders behind
            remove_made_folders(created)
            raise
        created.insert(0, folder)
    return created


def remove_made_folders(created: List[Path]) -> None:
    """Remove the folders made for a failed output (deepest first) that are still empty: a failed write leaves none."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # no longer empty (someone else's files): leave it and those above it
            return


@contextlib.contextmanager
def _temporary_beside(out: Path) -> Iterator[Path]:
    """Yield a new temporary name beside ``out``, its missing parent folders made. Whatever is left under that name
    (and its owner file) is removed afterwards, the parents made too after a failure; an OSError becomes a UserError."""
    remove_stale_partials(out)
    tmp = out.with_name(f'{_partial_prefix(out)}{secrets.token_hex(4)}')
    created: List[Path] = []  # the folders this run made, deepest first
    done = False
    try:
        created = make_parent_folders(out)
        yield tmp
        done = True
    except OSError as e:
        raise _wrap_os_error(e, out, tmp) from None
    finally:
        _remove(tmp)
        _remove(tmp.with_name(tmp.name + OWNER_SUFFIX))
        if not done:
            remove_made_folders(created)


def _replace(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``. An earlier ``out`` is first marked as a partial of this run and moved aside, so
    a run killed between the two renames leaves only partials the next run removes; it is deleted afterwards.
    An empty ``out`` (the user's own folder, maybe a mount point) is removed instead: no marker is ever left in it."""
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    write_json(out / PARTIAL_MARKER, _owner())
    old = out.with_name(f'{_partial_prefix(out)}old-{secrets.token_hex(4)}')
    try:
        os.rename(out, old)
    except BaseException:
        (out / PARTIAL_MARKER).unlink()
        raise
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        (out / PARTIAL_MARKER).unlink()
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
        out: PathLike,
        created_by: str,
        *,
        overwrite: bool = False,
        marker_info: Optional[dict] = None,
) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``out``, on any failure it is removed.

    Args:
        out: The folder to write.
        created_by: The command writing it (``'timm-astro evaluate'``), recorded in its marker.
        overwrite: Replace ``out`` if it is an earlier output of ``created_by``.
        marker_info: Extra JSON-serialisable facts for the marker (no timestamps: outputs stay reproducible).
    """
    out = check_output_location(out, overwrite=overwrite, created_by=created_by)
    with _temporary_beside(out) as tmp:
        tmp.mkdir()
        write_json(tmp / PARTIAL_MARKER, _owner())
        yield tmp
        write_json(tmp / OUTPUT_MARKER, {'created_by': created_by, 'version': __version__, **(marker_info or {})})
        (tmp / PARTIAL_MARKER).unlink()
        _replace(tmp, out)


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = 'w', *, newline: Optional[str] = None) -> Iterator[IO]:
    """Yield a file object for ``path`` (``open``'s ``mode`` and ``newline``; text is UTF-8); it replaces ``path``
    only if the block completes."""
    path = check_output_location(path, overwrite=True, kind='file')
    with _temporary_beside(path) as tmp:
        write_json(tmp.with_name(tmp.name + OWNER_SUFFIX), _owner())
        with open(tmp, mode, encoding=None if 'b' in mode else 'utf-8', newline=newline) as f:
            yield f
        os.replace(tmp, path)


def _lock_holder(fd: int) -> str:
    """`` (pid N)`` (and `` on HOST`` if another host's) from the lock file ``fd`` refers to; '' if not yet written."""
    try:
        pid, host = os.pread(fd, 4096, 0).decode('utf-8', 'replace').split()[:2]
    except (OSError, ValueError):
        return ''
    return f' (pid {pid})' if host == socket.gethostname() else f' (pid {pid} on {host})'


@contextlib.contextmanager
def output_lock(out: PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` while the block runs; another run that asks for it fails at once with
    ``another COMMAND is writing OUT (pid N)``. ``out``'s folder must exist.

    The lock is ``flock`` on ``.NAME.lock`` beside ``out``, which holds the owner's pid and host. The kernel releases
    it when its process ends however it ends (SIGKILL, a crash), so a lock file left behind never blocks a later run.
    The owner removes the file before letting go; a run that opened the file just before that removal would lock a
    file nobody else sees, so a lock counts only if the file locked is still the one at the lock's path.
    A file system without locks (some network or FUSE mounts) gets a note, and the run goes on unprotected.
    """
    out = Path(out)
    lock = out.with_name(f'.{out.name}.lock')
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        fcntl = None
    if fcntl is None:
        _note(f'{out}: cannot be locked on this system; make sure no other run writes it at the same time')
        yield
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(f'{out}: cannot be written ({lock}): {describe_os_error(e)}') from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise UserError(f'another {command} is writing {out}{holder}') from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: no locks here
            os.close(fd)
            _note(f'{out}: cannot be locked ({describe_os_error(e)}); make sure no other run writes it at the same '
                  f'time')
            yield
            return
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its owner had just removed: the lock is the file now at that path
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
        yield
    finally:
        _remove(lock)  # while still locked: whoever opens the path next gets a new file, and the lock with it
        os.close(fd)
