"""timm_astro.outputs: every check on a destination, all-or-nothing folders and files, and stale-partial clean-up."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from timm_astro import outputs
from timm_astro.errors import UserError
from timm_astro.outputs import (
    OUTPUT_MARKER, PARTIAL_MARKER, atomic_file, atomic_output_dir, check_output_location, remove_stale_partials)

from fs_helpers import NO_MOUNT, small_filesystem

BY = 'timm-astro test'


def _file(path: Path, text: str = 'x') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ours(path: Path, created_by: str = BY) -> Path:
    _file(path / 'result.txt')
    (path / OUTPUT_MARKER).write_text(json.dumps({'created_by': created_by}))
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


# name: (build the destination under tmp, keyword arguments, expected message or None when accepted)
LOCATIONS = {
    'new folder': (lambda t: t / 'new', {}, None),
    'new nested folders': (lambda t: t / 'a' / 'b' / 'c', {}, None),
    'empty folder': (lambda t: (t / 'empty').mkdir() or t / 'empty', {}, None),
    'earlier output, --overwrite': (lambda t: _ours(t / 'out'), {'overwrite': True}, None),
    'a file where a folder goes': (lambda t: _file(t / 'afile'), {'overwrite': True},
                                   'afile: exists and is a file, not a folder'),
    'parent is a file': (lambda t: _file(t / 'afile') / 'sub', {}, 'cannot be created, {tmp}/afile is a file'),
    'grandparent is a file': (lambda t: _file(t / 'afile') / 'sub' / 'deeper', {},
                              'cannot be created, {tmp}/afile is a file'),
    'parent is a broken link': (lambda t: _link(t / 'gone', str(t / 'nowhere')) / 'sub', {},
                                '{tmp}/gone is a broken symbolic link'),
    'destination is a broken link': (lambda t: _link(t / 'gone', str(t / 'nowhere')), {},
                                     'gone: is a broken symbolic link'),
    'not empty': (lambda t: _file(t / 'out' / 'notes.txt').parent, {}, 'folder is not empty; pass --overwrite'),
    'not empty, not ours, --overwrite': (lambda t: _file(t / 'out' / 'notes.txt').parent, {'overwrite': True},
                                         'not an earlier output of'),
    "another command's output, --overwrite": (lambda t: _ours(t / 'out', 'timm-astro other'), {'overwrite': True},
                                              'not an earlier output of'),
    'the current folder': (lambda t: Path('.'), {}, "'.': expected the name of a folder to write"),
    'file: a folder there': (lambda t: (t / 'd').mkdir() or t / 'd', {'kind': 'file'},
                             'd: is a folder; expected a file name'),
    'file: exists': (lambda t: _file(t / 'f.csv'), {'kind': 'file'}, 'f.csv: exists; pass --overwrite'),
    'file: exists, --overwrite': (lambda t: _file(t / 'f.csv'), {'kind': 'file', 'overwrite': True}, None),
}


@pytest.mark.parametrize('case', list(LOCATIONS))
def test_check_output_location(case, tmp_path):
    build, kwargs, expected = LOCATIONS[case]
    out = build(tmp_path)
    if expected is None:
        assert check_output_location(out, created_by=BY, **kwargs) == out
        return
    with pytest.raises(UserError) as e:
        check_output_location(out, created_by=BY, **kwargs)
    assert expected.format(tmp=tmp_path) in str(e.value), str(e.value)


def test_unwritable_parent_is_refused_before_any_work(tmp_path, monkeypatch):
    # root ignores permission bits, so the kernel's answer is stood in for: access() says no
    monkeypatch.setattr(os, 'access', lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UserError, match=r'cannot be created in .* \(permission denied\)'):
        check_output_location(tmp_path / 'out')


def test_read_only_file_system(tmp_path):
    with small_filesystem(tmp_path / 'ro', read_only=True) as ro:
        if ro is None:
            pytest.skip(NO_MOUNT)
        for kind in ('folder', 'file'):
            with pytest.raises(UserError, match=r'cannot be created in .* \(the file system is read-only\)'):
                check_output_location(ro / 'out', kind=kind)


def test_full_file_system_leaves_nothing(tmp_path):
    with small_filesystem(tmp_path / 'small', size_kb=64) as small:
        if small is None:
            pytest.skip(NO_MOUNT)
        with pytest.raises(UserError) as e:
            with atomic_output_dir(small / 'out', BY) as tmp:
                (tmp / 'big.bin').write_bytes(b'\0' * 256 * 1024)
        assert str(e.value).startswith(f'{small / "out"}: cannot be written: no space left on the device')
        assert '.partial-' not in str(e.value)  # the temporary folder is not the user's business
        assert list(small.iterdir()) == []
        with pytest.raises(UserError, match='no space left on the device'):
            with atomic_file(small / 'out.csv', 'wb') as f:
                f.write(b'\0' * 256 * 1024)
        assert list(small.iterdir()) == []
        # missing parent folders made for the output go too (`export ckpt full/a/b/out`)
        with pytest.raises(UserError, match='no space left on the device'):
            with atomic_output_dir(small / 'a' / 'b' / 'out', BY) as tmp:
                (tmp / 'big.bin').write_bytes(b'\0' * 256 * 1024)
        assert list(small.iterdir()) == []
        with pytest.raises(UserError, match='no space left on the device'):
            with atomic_file(small / 'a' / 'b' / 'out.csv', 'wb') as f:
                f.write(b'\0' * 256 * 1024)
        assert list(small.iterdir()) == []


@pytest.mark.parametrize('failure', [OSError(28, 'No space left on device'), RuntimeError('boom'), KeyboardInterrupt()])
def test_failed_write_removes_the_parent_folders_it_made(failure, tmp_path):
    (tmp_path / 'a').mkdir()
    _file(tmp_path / 'kept' / 'theirs.txt')
    for writer in (lambda out: atomic_output_dir(out, BY), lambda out: atomic_file(out, 'wb')):
        for out in (tmp_path / 'a' / 'b' / 'c' / 'out', tmp_path / 'kept' / 'x' / 'out'):
            with pytest.raises(UserError if isinstance(failure, OSError) else type(failure)):
                with writer(out):
                    raise failure
        # the folders made for the output are gone; those that were there before stay
        assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'kept']
        assert list((tmp_path / 'a').iterdir()) == [] and [p.name for p in (tmp_path / 'kept').iterdir()] == [
            'theirs.txt']
    with atomic_output_dir(tmp_path / 'a' / 'b' / 'out', BY) as tmp:
        (tmp / 'r.txt').write_text('done')
    assert (tmp_path / 'a' / 'b' / 'out' / 'r.txt').read_text() == 'done'  # on success they stay, of course


def test_folder_is_all_or_nothing(tmp_path):
    out = tmp_path / 'out'
    with atomic_output_dir(out, BY, marker_info={'seed': 3}) as tmp:
        (tmp / 'a.txt').write_text('first')
    assert json.loads((out / OUTPUT_MARKER).read_text())['seed'] == 3
    for failure in (RuntimeError('boom'), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with atomic_output_dir(out, BY, overwrite=True) as tmp:
                (tmp / 'a.txt').write_text('second')
                raise failure
        assert (out / 'a.txt').read_text() == 'first'
    with atomic_output_dir(out, BY, overwrite=True) as tmp:
        (tmp / 'b.txt').write_text('second')
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, 'b.txt']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_file_is_all_or_nothing(tmp_path):
    path = _file(tmp_path / 'report.json', 'old')
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write('half')
            raise RuntimeError
    assert path.read_text() == 'old' and sorted(p.name for p in tmp_path.iterdir()) == ['report.json']
    with atomic_file(path) as f:
        f.write('new')
    assert path.read_text() == 'new' and sorted(p.name for p in tmp_path.iterdir()) == ['report.json']


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def _partial(parent: Path, name: str, marker) -> Path:
    folder = parent / name
    folder.mkdir()
    _file(folder / 'image.png')
    if marker is not None:
        (folder / PARTIAL_MARKER).write_text(json.dumps(marker))
    return folder


def test_only_stale_partials_of_our_own_dead_runs_are_removed(tmp_path):
    host, me = socket.gethostname(), os.getpid()
    dead = _dead_pid()
    stale = [
        _partial(tmp_path, '.out.partial-dead', {'host': host, 'pid': dead}),
        _partial(tmp_path, '.out.partial-old-dead', {'host': host, 'pid': dead}),  # killed between two renames
        _partial(tmp_path, '.out.partial-reused', {'host': host, 'pid': me, 'started': -1}),  # pid taken since
    ]
    _file(tmp_path / '.out.partial-file')  # a file under construction whose owner file names a dead run
    _file(tmp_path / '.out.partial-file.owner', json.dumps({'host': host, 'pid': dead}))
    _file(tmp_path / '.out.partial-orphan.owner', json.dumps({'host': host, 'pid': dead}))  # its file is gone
    kept = [
        _partial(tmp_path, '.out.partial-alive', outputs._owner()),
        _partial(tmp_path, '.out.partial-elsewhere', {'host': host + '-other', 'pid': dead}),
        _partial(tmp_path, '.out.partial-stranger', None),
        _partial(tmp_path, '.other.partial-dead', {'host': host, 'pid': dead}),
        _partial(tmp_path, '.out.partial-broken', 'not a marker'),
    ]
    notes = []
    removed = remove_stale_partials(tmp_path / 'out', notes.append)
    assert sorted(p.name for p in removed) == sorted(
        [p.name for p in stale] + ['.out.partial-file', '.out.partial-orphan'])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert len(notes) == 5 and f'(process {dead}) that was killed' in notes[0]

    with atomic_output_dir(tmp_path / 'out', BY) as tmp:  # a new run leaves the others' partials alone too
        _file(tmp / 'x')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ['out'])


@pytest.mark.parametrize('earlier', ['empty folder', 'earlier output'])
def test_an_output_that_cannot_be_moved_aside_is_left_as_it_was(earlier, tmp_path, monkeypatch):
    """A folder that cannot be renamed (a mount point: EBUSY) keeps exactly what it had: no partial marker of ours is
    left in it, which would make it 'not ours' and refuse every later run."""
    import errno
    out = tmp_path / 'out'
    if earlier == 'empty folder':
        out.mkdir()
    else:
        with atomic_output_dir(out, 'test') as tmp:
            (tmp / 'a.txt').write_text('first')
    before = sorted(p.name for p in out.iterdir())
    real_rename, real_rmdir = os.rename, Path.rmdir

    def busy(path):
        if Path(path) == out:
            raise OSError(errno.EBUSY, 'Device or resource busy', str(path))
    monkeypatch.setattr(os, 'rename', lambda src, dst: busy(src) or real_rename(src, dst))
    monkeypatch.setattr(Path, 'rmdir', lambda self: busy(self) or real_rmdir(self))
    with pytest.raises(UserError):
        with atomic_output_dir(out, 'test', overwrite=True) as tmp:
            (tmp / 'a.txt').write_text('second')
    assert sorted(p.name for p in out.iterdir()) == before


# ---- one writer per output (issue 29): an exclusive lock beside the output, held for the whole run

def test_output_lock_lets_one_run_write_and_names_the_other(tmp_path):
    out = tmp_path / 'pred.csv'
    with outputs.output_lock(out, 'timm-astro predict'):
        assert (tmp_path / '.pred.csv.lock').read_text() == f'{os.getpid()} {socket.gethostname()}\n'
        with pytest.raises(UserError) as e:  # a second holder, even in the same process (its own open file)
            with outputs.output_lock(out, 'timm-astro predict'):
                pass
        assert str(e.value) == f'another timm-astro predict is writing {out} (pid {os.getpid()})'
    assert list(tmp_path.iterdir()) == [], 'the lock file goes with the lock'
    with outputs.output_lock(out, 'timm-astro predict'):  # free again
        pass


def test_output_lock_of_a_killed_run_is_free(tmp_path):
    """A run killed with SIGKILL cannot remove its lock file; the kernel releases the lock, and the next run takes
    it (a stale lock file is no obstacle)."""
    script = ('import os, signal, sys\n'
              'from timm_astro import outputs\n'
              'with outputs.output_lock(sys.argv[1], "timm-astro predict"):\n'
              '    os.kill(os.getpid(), signal.SIGKILL)\n')
    out = tmp_path / 'pred.csv'
    proc = subprocess.Popen([sys.executable, '-c', script, str(out)], stderr=subprocess.PIPE)
    assert proc.wait() == -9, proc.stderr.read().decode()
    assert (tmp_path / '.pred.csv.lock').read_text().startswith(f'{proc.pid} ')
    with outputs.output_lock(out, 'timm-astro predict'):
        assert (tmp_path / '.pred.csv.lock').read_text().startswith(f'{os.getpid()} ')
    assert list(tmp_path.iterdir()) == []


def test_output_lock_is_not_taken_on_a_lock_file_being_removed(tmp_path, monkeypatch):
    """The holder removes the lock file before releasing it; a run that opened the old file just before must not
    count the lock of that removed file as its own (two writers), but take the new file's."""
    out, lock = tmp_path / 'pred.csv', tmp_path / '.pred.csv.lock'
    real_open, opened = os.open, []

    def open_then_lose_the_race(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if Path(path) == lock:
            opened.append(path)
            if len(opened) == 1:
                os.unlink(lock)  # the holder's unlink lands between our open and our flock
        return fd
    monkeypatch.setattr(os, 'open', open_then_lose_the_race)
    with outputs.output_lock(out, 'timm-astro predict'):
        assert len(opened) == 2, 'the removed file was let go and the lock file opened again'
        assert lock.read_text().startswith(f'{os.getpid()} ')
    assert not lock.exists()
