"""Every bad input gets one clear line and exit code 2, and nothing is left half-written (issue #14).

Each case runs the ``timm-astro`` entry point (``timm_astro.cli.main``) as a user would, on tiny inputs, and checks
that stderr is one ``timm-astro CMD: error: ...`` line (after argparse's usage line, for option errors) naming what
was wrong, without a traceback or the token, and that no partial output is left. Full and read-only locations are
real tmpfs mounts (skipped, saying why, where mounting is not allowed); the endpoint that never answers is a
loopback port nobody accepts on. The Galaxy10 cases are in tests/test_galaxy10.py, load_model's in
tests/test_loading.py.
"""
import argparse
import contextlib
import csv
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import timm
from huggingface_hub import constants
from timm_astro.cli import main
from timm_astro.hub import export_model

from fs_helpers import NO_MOUNT, small_filesystem
from hub_server import SilentEndpoint

TOKEN = 'hf_errors_secret_token_93ab'
LABELS = ['round', 'cigar', 'spiral']


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A train.py run (checkpoint with its args, args.yaml, summary.csv) and an export of the same weights."""
    root = tmp_path_factory.mktemp('world')
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=3).eval()
    args = dict(model='astroformer_small', num_classes=3, input_size=[3, 32, 32], label_names=LABELS)
    run = root / 'run'
    run.mkdir()
    torch.save({'epoch': 1, 'arch': 'astroformer_small', 'state_dict': model.state_dict(),
                'args': argparse.Namespace(**args)}, run / 'model_best.pth.tar')
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    with open(run / 'summary.csv', 'w', newline='') as f:
        csv.writer(f).writerows([['epoch', 'train_loss', 'eval_top1'], [0, 1.2, 40.0], [1, 1.0, 55.0]])
    export = export_model(model, root / 'export', label_names=LABELS)
    return argparse.Namespace(root=root, run=run, ckpt=run / 'model_best.pth.tar', model=model, export=export)


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """huggingface_hub pointed at a port that never answers, with the token in HF_TOKEN and no stored token."""
    with SilentEndpoint() as url:
        monkeypatch.setattr(constants, 'ENDPOINT', url)
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
        monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-stored-token'))
        monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH', str(tmp_path / 'no-stored-tokens'))
        monkeypatch.setenv('HF_TOKEN', TOKEN)
        yield url


def _copy_run(world, tmp: Path, **changes) -> Path:
    run = tmp / 'run'
    run.mkdir()
    for f in world.run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    for name, text in changes.items():
        (run / name).write_text(text)
    return run / 'model_best.pth.tar'


def _zeroed_tensor_bytes(world, tmp: Path) -> Path:
    """64 bytes of the largest tensor record zeroed: torch.load reads it without a word."""
    path = _copy_run(world, tmp)
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack('<HH', data[record.header_offset + 26:record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len + 256
    data[start:start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with torch.serialization.safe_globals([argparse.Namespace]):
        torch.load(path, weights_only=True)  # the damage is silent to torch itself
    return path


class _RunsCode:
    def __reduce__(self):
        return os.system, (f'touch {Path(__file__).parent / "PWNED"}',)


def _unsafe(world, tmp: Path, **save_options) -> Path:
    """A checkpoint whose pickle calls os.system when loaded without weights_only (zip by default; legacy non-zip
    with ``_use_new_zipfile_serialization=False``; STACK_GLOBAL with ``pickle_protocol=4``)."""
    torch.save({'state_dict': world.model.state_dict(), 'extra': _RunsCode()}, tmp / 'unsafe.pth.tar', **save_options)
    assert zipfile.is_zipfile(tmp / 'unsafe.pth.tar') == save_options.get('_use_new_zipfile_serialization', True)
    return tmp / 'unsafe.pth.tar'


def _nan_weights(world, tmp: Path) -> Path:
    state = {k: v.clone() for k, v in world.model.state_dict().items()}
    state['head.fc.weight'][0, 0] = float('nan')
    torch.save({'state_dict': state, 'arch': 'astroformer_small'}, tmp / 'nan.pth.tar')
    return tmp / 'nan.pth.tar'


def _damaged_export(world, tmp: Path, weights: bytes = None, config: str = None) -> Path:
    folder = tmp / 'export'
    folder.mkdir()
    for f in world.export.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if weights is not None:
        (folder / 'model.safetensors').write_bytes(weights)
    if config is not None:
        (folder / 'config.json').write_text(config)
    return folder


def _nan_flipped(world, tmp: Path) -> Path:
    """One float32 of model.safetensors turned into a NaN: safetensors loads it without complaint."""
    data = (world.export / 'model.safetensors').read_bytes()
    header_len = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    first = min(v['data_offsets'][0] for k, v in header.items() if k != '__metadata__' and v['dtype'] == 'F32')
    at = 8 + header_len + first
    return _damaged_export(world, tmp, weights=data[:at] + struct.pack('<I', 0x7FC00000) + data[at + 4:])


def _data(tmp: Path) -> Path:
    """A labelled ImageFolder of four 8x8 images in two classes."""
    from PIL import Image
    for i in range(4):
        folder = tmp / 'data' / LABELS[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (8, 8), (i * 60, 0, 0)).save(folder / f'{i}.png')
    return tmp / 'data'


def _state_dict(world, tmp: Path) -> Path:
    torch.save(world.model.state_dict(), tmp / 'weights.pth')
    return tmp / 'weights.pth'


def _garbage(tmp: Path) -> Path:
    """Printable bytes that are no CSV of train.py's: it parses, with no epoch column, and gave no metrics."""
    (tmp / 'garbage.csv').write_bytes(bytes(torch.randint(33, 127, (3000,), generator=torch.Generator().manual_seed(0),
                                                          dtype=torch.uint8).tolist()))
    return tmp / 'garbage.csv'


def _file(path: Path) -> Path:
    path.write_text('keep me\n')
    return path


def _full_disk(tmp: Path, stack: contextlib.ExitStack) -> Path:
    small = stack.enter_context(small_filesystem(tmp / 'small', size_kb=64))
    if small is None:
        pytest.skip(NO_MOUNT)
    return small / 'out'


# case: build(world, tmp, stack) -> (argv, the message expected in the error line, the output that must not appear)
CASES = {
    '4 --overwrite of a file that is not our output': lambda w, t, s: (
        ['export', str(w.ckpt), str(_file(t / 'outfile')), '--overwrite'],
        '{tmp}/outfile: exists and is a file, not a folder', None),
    '5 export onto a full disk': lambda w, t, s: (
        ['export', str(w.ckpt), str(_full_disk(t, s))], 'out: cannot be written: no space left on the device',
        t / 'small' / 'out'),
    '6 zeroed bytes inside the tensor data': lambda w, t, s: (
        ['export', str(_zeroed_tensor_bytes(w, t)), str(t / 'out')], 'model_best.pth.tar: damaged (Bad CRC-32',
        t / 'out'),
    '7 a pickle that runs os.system': lambda w, t, s: (
        ['export', str(_unsafe(w, t)), str(t / 'out')],
        'unsafe.pth.tar: refused for safety: it needs unsafe unpickling (it contains posix.system)', t / 'out'),
    '7 a legacy (non-zip) pickle that runs os.system': lambda w, t, s: (
        ['export', str(_unsafe(w, t, _use_new_zipfile_serialization=False)), str(t / 'out')],
        'unsafe.pth.tar: refused for safety: it needs unsafe unpickling (it contains posix.system)', t / 'out'),
    '7 a protocol-4 pickle that runs os.system': lambda w, t, s: (
        ['export', str(_unsafe(w, t, pickle_protocol=4)), str(t / 'out')],
        'unsafe.pth.tar: refused for safety: it needs unsafe unpickling (it contains posix.system)', t / 'out'),
    '8 args.yaml with a syntax error': lambda w, t, s: (
        ['export', str(_copy_run(w, t, **{'args.yaml': 'model: [astroformer_small\n'})), str(t / 'out')],
        'run/args.yaml: not valid YAML', t / 'out'),
    '8 args.yaml with a python tag': lambda w, t, s: (
        ['export', str(_copy_run(w, t, **{'args.yaml': '!!python/object/apply:os.system ["true"]\n'})),
         str(t / 'out')], 'run/args.yaml: refused: could not determine a constructor', t / 'out'),
    '8 summary.csv with a non-numeric value': lambda w, t, s: (
        ['export', str(_copy_run(w, t, **{'summary.csv': 'epoch,eval_top1\n0,40.0\n1,n/a\n'})), str(t / 'out')],
        "run/summary.csv: line 3: eval_top1 is 'n/a'; expected a number", t / 'out'),
    '15 export of a folder': lambda w, t, s: (
        ['export', str(w.run), str(t / 'out')],
        'run: is a folder, not a file; expected a train.py checkpoint', t / 'out'),
    '16 NaN weights': lambda w, t, s: (
        ['export', str(_nan_weights(w, t)), str(t / 'out')],
        'nan.pth.tar: 1 weight tensors hold NaN or infinite values (head.fc.weight)', t / 'out'),
    '17 output inside a file': lambda w, t, s: (
        ['export', str(w.ckpt), str(_file(t / 'afile') / 'sub')],
        '{tmp}/afile/sub: cannot be created, {tmp}/afile is a file, not a folder', None),
    '18 run of a folder': lambda w, t, s: (
        ['run', str(t), 'data'], '{tmp}: is a folder, not a script', None),
    '22b models --num-classes -5': lambda w, t, s: (
        ['models', '--num-classes', '-5'], 'argument --num-classes: expected a whole number of at least 1', None),
    # issue 29: options that contradict the model, or that timm would run as something else
    '29 --num-classes that differs from the export': lambda w, t, s: (
        ['evaluate', f'local-dir:{w.export}', str(_data(t)), '--output', str(t / 'out'), '--num-classes', '5'],
        'num_classes 5 was asked for, but the weights of local-dir:{tmp_root}/export predict 3 classes', t / 'out'),
    '29 --num-classes that differs from the checkpoint': lambda w, t, s: (
        ['evaluate', str(w.ckpt), str(_data(t)), '--output', str(t / 'out'), '--num-classes', '2'],
        'num_classes 2 was asked for, but the weights of', t / 'out'),
    '29 --num-classes -1': lambda w, t, s: (
        ['evaluate', str(w.ckpt), str(_data(t)), '--num-classes', '-1'],
        "argument --num-classes: expected a whole number of at least 1, got '-1'", None),
    '29 --std 0 0 0': lambda w, t, s: (
        ['evaluate', str(w.ckpt), str(_data(t)), '--std', '0', '0', '0'],
        "argument --std: expected a finite number above 0, got '0'", None),
    '29 --crop-pct nan': lambda w, t, s: (
        ['predict', str(w.ckpt), str(_data(t)), '--crop-pct', 'nan'],
        "argument --crop-pct: expected a fraction in (0, 1] (1: no crop), got 'nan'", None),
    '29 --crop-pct 0': lambda w, t, s: (
        ['evaluate', str(w.ckpt), str(_data(t)), '--crop-pct', '0'],
        "argument --crop-pct: expected a fraction in (0, 1] (1: no crop), got '0'", None),
    '29 --interpolation foo': lambda w, t, s: (
        ['evaluate', str(w.ckpt), str(_data(t)), '--interpolation', 'foo'],
        "argument --interpolation: invalid choice: 'foo'", None),
    '29 --device foo': lambda w, t, s: (
        ['evaluate', str(w.ckpt), str(_data(t)), '--device', 'foo'],
        "argument --device: expected a torch device such as cpu, cuda or cuda:1, got 'foo'", None),
    '29 --device cuda:7': lambda w, t, s: (
        ['predict', str(w.ckpt), str(_data(t)), '--device', 'cuda:7'], "argument --device: 'cuda:7': ", None),
    '29 a bare state dict as MODEL': lambda w, t, s: (
        ['evaluate', str(_state_dict(w, t)), str(_data(t)), '--output', str(t / 'out')],
        'weights.pth: is a bare state dict (weights only): it does not say which model they belong to; pass the model '
        'name with --checkpoint', t / 'out'),
    '29 export --summary of binary garbage': lambda w, t, s: (
        ['export', str(w.ckpt), str(t / 'out'), '--summary', str(_garbage(t))],
        "garbage.csv: no epoch column", t / 'out'),
    '9 an endpoint that never answers': lambda w, t, s: (
        ['push', str(w.export), 'astro/hung', '--timeout', '0.5', '--retries', '1'],
        '{url}: no answer within 0.5 s (2 attempts, creating the repo; nothing was uploaded)', None),
    '10 a non-ASCII character in HF_TOKEN': lambda w, t, s: (
        ['push', str(w.export), 'astro/x'], 'has a character that cannot be sent, U+00E9 at position', None),
    '10 HF_ENDPOINT with a port out of range': lambda w, t, s: (
        ['push', str(w.export), 'astro/x'],
        "HF_ENDPOINT='http://127.0.0.1:99999' is not a usable URL (Port out of range 0-65535)", None),
    '23 a random model.safetensors': lambda w, t, s: (
        ['push', str(_damaged_export(w, t, weights=os.urandom(4096))), 'astro/x'],
        'export/model.safetensors: not a readable safetensors file', None),
    '23 a truncated model.safetensors': lambda w, t, s: (
        ['push', str(_damaged_export(w, t, weights=(w.export / 'model.safetensors').read_bytes()[:3000])), 'astro/x'],
        'export/model.safetensors: not a readable safetensors file', None),
    '23 an invalid config.json': lambda w, t, s: (
        ['push', str(_damaged_export(w, t, config='{"architecture": ')), 'astro/x'],
        'export/config.json: not valid JSON', None),
    '23 a bit-flipped model.safetensors': lambda w, t, s: (
        ['push', str(_nan_flipped(w, t)), 'astro/x'],
        'export/model.safetensors: 1 weight tensors hold NaN or infinite values', None),
}


@pytest.mark.parametrize('case', list(CASES))
def test_one_clear_line_and_nothing_half_written(case, world, hub_env, tmp_path, capsys, monkeypatch):
    if 'HF_TOKEN' in case:
        monkeypatch.setenv('HF_TOKEN', TOKEN + '\u00e9')
    if 'HF_ENDPOINT' in case:
        monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:99999')
    with contextlib.ExitStack() as stack:
        argv, expected, out = CASES[case](world, tmp_path, stack)
        before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
        if argv[0] == 'push' and '--timeout' not in argv:
            argv += ['--timeout', '5', '--retries', '0']  # these must fail before the first request
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exit, as the console script would end
            code = e.code
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        if lines and lines[0].startswith('usage:'):  # an option argparse refused: usage (maybe wrapped), the one line
            lines = [line for line in lines if not line.startswith(('usage:', ' '))]
        assert code == 2 and len(lines) == 1, captured.err
        assert lines[0].startswith(f'timm-astro {argv[0]}: error: '), lines[0]
        assert expected.format(tmp=tmp_path, url=hub_env, tmp_root=world.root) in lines[0], lines[0]
        assert 'Traceback' not in captured.err and TOKEN not in captured.out + captured.err
        left = [p for p in tmp_path.rglob('*') if '.partial-' in p.name or '.old-' in p.name]
        assert not left and (out is None or not out.exists()), left
        assert {p: p.read_bytes() for p in before} == before, 'an input was changed'
    assert not (Path(__file__).parent / 'PWNED').exists(), 'the pickle ran its code'


def test_nan_weights_export_with_allow_nan(world, tmp_path, capsys):
    assert main(['export', str(_nan_weights(world, tmp_path)), str(tmp_path / 'out'), '--allow-nan']) == 0
    assert (tmp_path / 'out' / 'model.safetensors').is_file()


def test_unusable_hf_endpoint_before_import_is_one_line(world, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING'))}
    env.update(HF_ENDPOINT='http://127.0.0.1:99999', HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / 'hf'))
    proc = subprocess.run([sys.executable, '-m', 'timm_astro', 'push', str(world.export), 'astro/x'],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
