"""Export / push / pull through a Hub on 127.0.0.1 (tests/hub_server.py), with huggingface_hub's own client.

Nothing here reaches the internet: in-process calls go to the loopback endpoint through patched
``huggingface_hub.constants`` (its env variables are read at import); one pull runs in a fresh subprocess with
``HF_ENDPOINT`` set, as a user's would. olah (a Hub mirror server from PyPI) serves one more pull if installed.
"""
import argparse
import copy
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import timm
import timm_astro  # noqa: F401
from huggingface_hub import constants
from timm_astro import hub as tahub
from timm_astro.commands.export import main as export_main
from timm_astro.commands.push import main as push_main
from timm_astro.hub import HubError, export_checkpoint, export_model, push

from hub_server import LoopbackHub, OlahMirror

LABELS = ['smooth round', 'smooth cigar', 'edge-on', 'spiral']
TOKEN = 'hf_loopback_secret_token_4f1c'

PULL = """
import sys, torch, timm, timm_astro
x = torch.load(sys.argv[1])
model = timm.create_model(sys.argv[2], pretrained=True).eval()
with torch.no_grad():
    logits = model(x)
torch.save({'logits': logits, 'data_config': timm.data.resolve_model_data_config(model),
            'label_names': model.pretrained_cfg.get('label_names'), 'num_classes': model.num_classes}, sys.argv[3])
"""


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _same_weights(model, reference):
    a, b = model.state_dict(), reference.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A train.py output folder: model_best.pth.tar (with EMA and argparse args), args.yaml and summary.csv."""
    root = tmp_path_factory.mktemp('run')
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=len(LABELS)).eval()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    args = argparse.Namespace(
        model='astroformer_small', num_classes=len(LABELS), input_size=[3, 64, 64], img_size=None, in_chans=None,
        mean=[0.1, 0.2, 0.3], std=[0.25, 0.25, 0.25], crop_pct=1.0, interpolation='', gp=None, bn_momentum=None,
        bn_eps=None, model_kwargs={}, dataset='galaxy10', epochs=3, batch_size=16, opt='adamw', lr=1e-3,
        weight_decay=0.05, sched='cosine', model_ema=True, eval_metric='top1', device='cpu', label_names=LABELS)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({
        'epoch': 1, 'arch': 'astroformer_small', 'state_dict': model.state_dict(), 'state_dict_ema': ema.state_dict(),
        'optimizer': optimizer.state_dict(), 'version': 2, 'args': args, 'metric': 61.5,
        'saver': {'checkpoint_files': [['model_best.pth.tar', 61.5]]},
    }, root / 'model_best.pth.tar')
    (root / 'args.yaml').write_text(yaml.safe_dump(vars(args)))
    with open(root / 'summary.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'])
        w.writerows([[0, 1.3, 1.2, 40.0, 100.0, 1e-3], [1, 1.1, 1.0, 61.5, 100.0, 5e-4], [2, 1.0, 1.1, 58.25, 100.0, 1e-4]])
    x = torch.randn(1, 3, 32, 32)  # any multiple of 32 runs; the smallest keeps the forward passes cheap
    torch.save(x, root / 'x.pt')
    return argparse.Namespace(root=root, ckpt=root / 'model_best.pth.tar', x=x, model=model, ema=ema,
                              ema_logits=_logits(ema, x))


@pytest.fixture(scope='module')
def hub():
    with LoopbackHub(token=TOKEN) as server:  # stops when the module's tests are done
        yield server


@pytest.fixture
def hub_env(hub, monkeypatch, tmp_path):
    """Point huggingface_hub at the loopback hub, with the token in HF_TOKEN and no stored token."""
    monkeypatch.setattr(constants, 'ENDPOINT', hub.url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', hub.url + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-stored-token'))
    monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH', str(tmp_path / 'no-stored-tokens'))
    for var in ('HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE', 'HF_OIDC_ID_TOKEN'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    return hub


def _pull_in_subprocess(tmp_path, name, x_path, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING'))}
    env.update(HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_DISABLE_TELEMETRY='1', **env_extra)
    out = tmp_path / f'pulled-{len(list(tmp_path.glob("pulled-*")))}.pt'
    proc = subprocess.run([sys.executable, '-c', PULL, str(x_path), name, str(out)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.load(out)


def _posts(hub, since):
    return [r for r in hub.requests[since:] if r[0] == 'POST']


# ---------------------------------------------------------------------------------------------------------------
# export


def test_export_checkpoint_folder(run, tmp_path):
    out = export_checkpoint(run.ckpt, tmp_path / 'galaxy10-small')  # args.yaml / summary.csv found next to it
    assert sorted(p.name for p in out.iterdir()) == ['.timm-astro.json', 'README.md', 'config.json', 'model.safetensors']

    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'astroformer_small'
    assert config['num_classes'] == 4 and config['label_names'] == LABELS
    assert config['model_args']['num_classes'] == 4
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [3, 64, 64] and pcfg['mean'] == [0.1, 0.2, 0.3] and pcfg['std'] == [0.25] * 3
    assert pcfg['crop_pct'] == 1.0

    readme = (out / 'README.md').read_text()
    for text in ('import timm_astro', "hf-hub:ORG/REPO", 'Top-1 (%): 61.50', 'Best epoch: 1 (of 3 epochs',
                 'Top-5 (%): 100.00', 'lr: 0.001', 'opt: adamw', 'license: apache-2.0', '- galaxy10',
                 'arXiv:2304.05350', '@article{dagli2023astroformer', 'Params (M): 0.90', 'Image size: 64 x 64',
                 'EMA weights', '3: spiral'):
        assert text in readme, text

    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert _same_weights(model, run.ema)
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 64, 64)
    assert model.pretrained_cfg['label_names'] == LABELS


def test_export_cli_no_ema_and_explicit_sidecars(run, tmp_path, capsys):
    ckpt = tmp_path / 'last.pth.tar'
    ckpt.write_bytes(run.ckpt.read_bytes())  # no sidecars next to this copy: they are passed explicitly
    out = tmp_path / 'raw'
    assert export_main([str(ckpt), str(out), '--no-ema', '--summary', str(run.root / 'summary.csv'),
                        '--args', str(run.root / 'args.yaml')]) == 0
    assert 'astroformer_small, 4 classes, input 3x64x64' in capsys.readouterr().out
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert _same_weights(model, run.model)
    readme = (out / 'README.md').read_text()
    assert 'non-EMA weights' in readme and 'Top-1 (%): 61.50' in readme


def test_export_of_a_run_on_an_imported_folder_says_what_it_trained_on(run, tmp_path, capsys):
    """A train.py run on a folder `timm-astro import` wrote (dataset ''): the card names the source, the split
    trained on and its class-labelled images, and what was held out (as text, not as a dataset id in the metadata);
    the class names come from the import; --training-data overrides."""
    data = tmp_path / 'gz2'
    data.mkdir()
    (data / 'dataset.json').write_text(json.dumps({
        'created_by': 'timm-astro import', 'source': 'gz2-votes', 'title': 'Galaxy Zoo 2 vote counts (a copy)',
        'num_classes': 4, 'seed': 0, 'splits': {'train': 45, 'validation': 9, 'test': 5},  # unclassified too
        'classes': [{'label': i, 'name': f'class {i}', 'train': 10, 'validation': 2, 'test': 1} for i in (1, 0, 2, 3)]}))
    args = {**yaml.safe_load((run.root / 'args.yaml').read_text()), 'dataset': '', 'data_dir': str(data),
            'label_names': None, 'pretrained_path': 'gz2_pretrain/model_best.pth.tar'}
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(args))
    out = export_checkpoint(run.ckpt, tmp_path / 'out', args_yaml=tmp_path / 'args.yaml')
    readme = (out / 'README.md').read_text()
    assert ('trained on Galaxy Zoo 2 vote counts (a copy): its `train` split (40 images, 4 classes); '
            '`validation` (8) and `test` (4) not trained on (`timm-astro import gz2-votes` split seed 0)'
            in readme), readme
    assert '**Training data:** Galaxy Zoo 2' in readme and 'datasets:' not in readme  # not a dataset id
    assert 'pretrained_path: gz2_pretrain/model_best.pth.tar' in readme
    assert json.loads((out / 'config.json').read_text())['label_names'] == [f'class {i}' for i in range(4)]
    assert export_main([str(run.ckpt), str(tmp_path / 'named'), '--args', str(tmp_path / 'args.yaml'),
                        '--training-data', 'my galaxies']) == 0
    assert 'trained on my galaxies' in (tmp_path / 'named' / 'README.md').read_text()


def test_export_model_is_all_or_nothing(run, tmp_path, monkeypatch):
    out = tmp_path / 'demo'
    export_model(run.ema, out, label_names=LABELS, metrics={'top1': 90.0}, data_config={'input_size': (3, 64, 64)})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError):
        export_model(run.model, out)

    def broken_card(*args, **kwargs):
        raise RuntimeError('disk full')
    monkeypatch.setattr(tahub, '_model_card', broken_card)
    with pytest.raises(RuntimeError):
        export_model(run.model, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old export is untouched
    with pytest.raises(RuntimeError):
        export_model(run.model, tmp_path / 'never')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['demo']  # no half-written or temporary folder left
    monkeypatch.undo()

    export_model(run.model, out, overwrite=True)
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert _same_weights(model, run.model)
    with pytest.raises(HubError, match='3 label names'):
        export_model(run.model, tmp_path / 'bad', label_names=LABELS[:3])


# ---------------------------------------------------------------------------------------------------------------
# push and pull


def test_push_checkpoint_pull_and_offline(run, hub_env, tmp_path, capsys, monkeypatch):
    """The CLI pushes a train.py checkpoint in one commit; a fresh process pulls it back through HF_ENDPOINT;
    then it loads again from the populated cache alone in offline mode."""
    hub = hub_env
    start = len(hub.requests)
    assert push_main([str(run.ckpt), 'astro/galaxy10-small', '--commit-message', 'first model']) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f'{hub.url}/astro/galaxy10-small'
    assert TOKEN not in captured.out + captured.err
    assert [p for _, p in _posts(hub, start)] == [
        '/api/repos/create', '/api/validate-yaml', '/api/models/astro/galaxy10-small/preupload/main',
        '/api/models/astro/galaxy10-small/commit/main']
    files = hub.files('astro/galaxy10-small')
    assert sorted(files) == ['.gitattributes', 'README.md', 'config.json', 'model.safetensors']  # no pickle
    assert hub.commit_count('astro/galaxy10-small') == 2  # the repo's initial commit + one
    readme = files['README.md'].decode()
    assert "hf-hub:astro/galaxy10-small'" in readme and 'ORG/REPO' not in readme
    assert '# Model card for galaxy10-small' in readme

    cache = tmp_path / 'hub_cache'
    pulled = _pull_in_subprocess(tmp_path, 'hf-hub:astro/galaxy10-small', run.root / 'x.pt',
                                 {'HF_ENDPOINT': hub.url, 'HF_HUB_CACHE': str(cache)})
    assert torch.equal(pulled['logits'], run.ema_logits)
    assert pulled['num_classes'] == 4 and pulled['label_names'] == LABELS
    assert pulled['data_config']['input_size'] == (3, 64, 64)
    assert list(pulled['data_config']['mean']) == [0.1, 0.2, 0.3]

    # offline, in this process (HF_HUB_OFFLINE is read at import: patch what it sets), with no server to ask
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', 'http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}')
    before = len(hub.requests)
    offline = timm.create_model('hf-hub:astro/galaxy10-small', pretrained=True, cache_dir=cache)
    assert len(hub.requests) == before
    assert torch.equal(_logits(offline, run.x), run.ema_logits)
    assert timm.data.resolve_model_data_config(offline) == pulled['data_config']
    assert offline.pretrained_cfg['label_names'] == LABELS


def test_pull_through_olah_mirror(run, hub_env, tmp_path, monkeypatch):
    """What push uploaded, served by olah (an independent Hub mirror implementation) from a git copy."""
    pytest.importorskip('olah', reason='olah (Hub mirror server, dev dependency) is not installed')
    if shutil.which('git') is None:
        pytest.skip('git is needed to build the mirror repository olah serves')
    push(export_checkpoint(run.ckpt, tmp_path / 'export'), 'astro/mirrored')
    with OlahMirror(tmp_path / 'olah') as mirror:
        hub_env.export_git('astro/mirrored', mirror.repo_path('astro/mirrored'))
        monkeypatch.setattr(constants, 'ENDPOINT', mirror.url)
        monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', mirror.url + '/{repo_id}/resolve/{revision}/{filename}')
        before = len(hub_env.requests)
        model = timm.create_model('hf-hub:astro/mirrored', pretrained=True, cache_dir=tmp_path / 'cache')
        assert len(hub_env.requests) == before  # everything came from olah
    assert torch.equal(_logits(model, run.x), run.ema_logits)
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 64, 64)
    assert model.pretrained_cfg['label_names'] == LABELS


def test_push_256px_astroformer_0_comes_back_at_256(hub_env, tmp_path):
    torch.manual_seed(1)
    model = timm.create_model('astroformer_0', img_size=256, num_classes=3).eval()
    x = torch.randn(1, 3, 256, 256)
    expected = _logits(model, x)
    folder = export_model(model, tmp_path / 'astro0-256', label_names=['a', 'b', 'c'])
    url = push(folder, 'astro/astro0-256')
    assert url == f'{hub_env.url}/astro/astro0-256'

    pulled = timm.create_model('hf-hub:astro/astro0-256', pretrained=True, cache_dir=tmp_path / 'cache').eval()
    assert timm.data.resolve_model_data_config(pulled)['input_size'] == (3, 256, 256)
    assert tuple(pulled.pretrained_model_args['img_size']) == (256, 256)
    assert pulled.pretrained_cfg['label_names'] == ['a', 'b', 'c']
    assert torch.equal(_logits(pulled, x), expected)


def test_push_private_revision(run, hub_env, tmp_path):
    folder = export_checkpoint(run.ckpt, tmp_path / 'export')
    url = push(folder, 'astro/private-model', private=True, revision='dev', commit_message='to dev')
    assert url == f'{hub_env.url}/astro/private-model/tree/dev'
    assert hub_env.repos['astro/private-model'].private
    assert sorted(hub_env.files('astro/private-model', 'dev')) == [
        '.gitattributes', 'README.md', 'config.json', 'model.safetensors']
    assert sorted(hub_env.files('astro/private-model', 'main')) == ['.gitattributes']
    model = timm.create_model('hf-hub:astro/private-model@dev', pretrained=True, cache_dir=tmp_path / 'cache')
    assert _same_weights(model, run.ema)


# ---------------------------------------------------------------------------------------------------------------
# bad input: one clear line, exit 2, nothing uploaded


@pytest.fixture(scope='module')
def bad_inputs(run, tmp_path_factory):
    root = tmp_path_factory.mktemp('bad')
    data = run.ckpt.read_bytes()
    cases = {}

    torch.save(run.model.state_dict(), root / 'weights.pth')
    cases['no architecture'] = (root / 'weights.pth', 'names no architecture')

    (root / 'truncated.pth.tar').write_bytes(data[:len(data) // 2])
    cases['truncated'] = (root / 'truncated.pth.tar', 'corrupt or truncated')
    (root / 'garbage.pth.tar').write_bytes(b'this is not a checkpoint\n' * 64)
    cases['corrupt'] = (root / 'garbage.pth.tar', 'corrupt or truncated')

    class Payload:  # would create a file if unpickling ran code
        def __reduce__(self):
            return open, (str(root / 'PWNED'), 'w')
    torch.save({'state_dict': run.model.state_dict(), 'extra': Payload()}, root / 'unsafe.pth.tar')
    cases['unsafe pickle'] = (root / 'unsafe.pth.tar', 'needs unsafe unpickling (it contains io.open)')

    def run_dir(name, **changes):
        d = root / name
        d.mkdir()
        (d / 'model_best.pth.tar').write_bytes(data)
        args = yaml.safe_load((run.root / 'args.yaml').read_text())
        args.update(changes)
        (d / 'args.yaml').write_text(yaml.safe_dump(args))
        return d / 'model_best.pth.tar'
    cases['num_classes'] = (run_dir('classes', num_classes=5),
                            'num_classes=5 (from the train args) but the weights have 4 outputs (head.fc.weight)')
    cases['unknown model'] = (run_dir('unknown', model='astroformer_tiny'), "unknown model 'astroformer_tiny'")
    cases['label names'] = (run_dir('labels', label_names=LABELS[:3]), 'label_names in the train args has 3 entries')
    cases['missing file'] = (root / 'nope.pth.tar', 'not found')
    return root, cases


CASES = ['no architecture', 'truncated', 'corrupt', 'unsafe pickle', 'num_classes', 'unknown model', 'label names',
         'missing file']


def _one_line_error(capsys, expected):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert expected in err, err
    assert TOKEN not in captured.out + captured.err
    return err


@pytest.mark.parametrize('case', CASES)
def test_bad_input(case, bad_inputs, hub_env, tmp_path, capsys):
    root, cases = bad_inputs
    path, expected = cases[case]
    assert export_main([str(path), str(tmp_path / 'out')]) == 2
    _one_line_error(capsys, expected)
    assert not (tmp_path / 'out').exists()

    start = len(hub_env.requests)
    assert push_main([str(path), f'astro/{case.replace(" ", "-")}']) == 2
    _one_line_error(capsys, expected)
    assert _posts(hub_env, start) == []
    assert not (root / 'PWNED').exists()


def test_unknown_model_option(run, tmp_path, capsys):
    assert export_main([str(run.ckpt), str(tmp_path / 'out'), '--model', 'not_a_model']) == 2
    err = _one_line_error(capsys, "unknown model 'not_a_model' (from --model)")
    assert 'astroformer_small' in err  # the message lists the models that exist


def test_push_without_token(run, hub_env, monkeypatch, capsys):
    monkeypatch.delenv('HF_TOKEN')
    start = len(hub_env.requests)
    assert push_main([str(run.ckpt), 'astro/no-token']) == 2
    _one_line_error(capsys, 'no Hugging Face token: set HF_TOKEN or run `hf auth login`')
    assert hub_env.requests[start:] == []


def test_push_with_rejected_token(run, hub_env, monkeypatch, capsys):
    monkeypatch.setenv('HF_TOKEN', 'hf_wrong_token_value_123')
    start = len(hub_env.requests)
    assert push_main([str(run.ckpt), 'astro/wrong-token']) == 2
    captured = capsys.readouterr()
    assert 'refused the token (HTTP 401)' in captured.err and 'Traceback' not in captured.err
    assert 'hf_wrong_token_value_123' not in captured.out + captured.err
    assert 'astro/wrong-token' not in hub_env.repos
    assert [p for _, p in _posts(hub_env, start)] == ['/api/repos/create']


def test_server_error_midway_commits_nothing(run, hub_env, tmp_path, capsys):
    folder = export_checkpoint(run.ckpt, tmp_path / 'export')
    hub_env.fail_next_commit = 500  # the server fails after receiving the whole commit
    assert push_main([str(folder), 'astro/flaky']) == 2
    _one_line_error(capsys, 'nothing was committed')
    assert sorted(hub_env.files('astro/flaky')) == ['.gitattributes']
    assert hub_env.commit_count('astro/flaky') == 1

    assert push_main([str(folder), 'astro/flaky']) == 0  # trying again lands everything in one commit
    assert sorted(hub_env.files('astro/flaky')) == ['.gitattributes', 'README.md', 'config.json', 'model.safetensors']
    assert hub_env.commit_count('astro/flaky') == 2


def test_push_refuses_folder_with_only_pickles(run, hub_env, tmp_path, capsys):
    folder = tmp_path / 'pickled'
    folder.mkdir()
    torch.save(run.model.state_dict(), folder / 'pytorch_model.bin')
    (folder / 'config.json').write_text(json.dumps({'architecture': 'astroformer_small', 'num_classes': 4}))
    start = len(hub_env.requests)
    assert push_main([str(folder), 'astro/pickled']) == 2
    _one_line_error(capsys, 'pytorch_model.bin are pickles and are never published')
    assert _posts(hub_env, start) == []
