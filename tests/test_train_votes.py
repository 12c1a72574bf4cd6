"""`timm-astro train-votes` end to end on a tiny vote set the tests write: 2 epochs, an interruption and an exact
resume, the export reloaded with its tree; the recipe file equal to the built-in recipe; bad runs refused."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import timm
from timm_astro.commands import train_votes
from timm_astro.data.decision_tree import load_tree
from timm_astro.training import read_checkpoint
from timm_astro.votes_model import is_votes_model, load_votes_model

from votes_helpers import write_vote_set

ROOT = Path(__file__).resolve().parents[1]
# tiny and quick: 12 training galaxies at 16 px, 3 steps of 4 per epoch; EMA on so that resuming must restore it
TINY = ['--epochs', '2', '--img-size', '16', '--batch-size', '4', '--set', 'model_ema=true', 'model_ema_decay=0.5',
        'warmup_epochs=0']


@pytest.fixture(scope='module')
def vote_set(tmp_path_factory) -> Path:
    return write_vote_set(tmp_path_factory.mktemp('votes') / 'gz2', per_split=(12, 6, 2))


def _train(data: Path, out: Path, *extra: str) -> int:
    return train_votes.main(['astroformer_small', str(data), '--out', str(out)] + TINY + list(extra))


def test_recipe_file_is_the_built_in_recipe():
    cfg = yaml.safe_load((ROOT / 'train_configs' / 'gz2_votes_astroformer_small.yaml').read_text())
    train_py_only = {'device_modules', 'model', 'num_classes', 'input_size', 'in_chans', 'amp'}
    assert {k: v for k, v in cfg.items() if k not in train_py_only} == train_votes.GZ2_VOTES_RECIPE
    assert cfg['num_classes'] == load_tree('gz2').n_answers and cfg['input_size'][1:] == [cfg['img_size']] * 2


@pytest.fixture(scope='module')
def finished_run(vote_set: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('runs') / 'straight'
    assert _train(vote_set, out) == 0
    return out


def test_two_epochs_then_an_export_that_loads_with_its_tree(finished_run: Path, vote_set: Path):
    summary = json.loads((finished_run / 'summary.json').read_text())
    assert [h['epoch'] for h in summary['history']] == [1, 2]
    for h in summary['history']:
        assert h['train_loss'] > 0 and h['val_loss'] > 0 and 0 <= h['val_fraction_mae'] <= 1
    assert summary['reload_identical'] and summary['validation']['questions']['t01_smooth_or_features']['galaxies']
    assert read_checkpoint(finished_run / 'last.pth.tar')['epoch'] == 2

    tree = load_tree('gz2')
    model = load_votes_model(f'local-dir:{finished_run / "model"}')
    assert is_votes_model(model) and model.num_classes == 28
    assert model.pretrained_cfg['tree'] == tree.to_dict() and model.pretrained_cfg['label_names'] == tree.answer_names
    assert model.pretrained_cfg['input_size'] == (3, 16, 16)
    config = json.loads((finished_run / 'model' / 'config.json').read_text())
    assert config['task'] == 'votes' and config['label_names'] == tree.answer_names
    assert config['label_descriptions']['t02_edgeon_a04_yes'] == 'Yes'
    # plain timm loads it too (one output per answer), without the votes keys
    plain = timm.create_model(f'local-dir:{finished_run / "model"}', pretrained=True).eval()
    assert not is_votes_model(plain)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(images), model(images))
    # the checkpoint loads as a votes model as well, EMA weights first, with the preprocessing it trained with
    from_checkpoint = load_votes_model(str(finished_run / 'last.pth.tar'))
    assert is_votes_model(from_checkpoint) and from_checkpoint.pretrained_cfg['input_size'] == (3, 16, 16)
    with torch.no_grad():
        assert torch.equal(from_checkpoint(images), model(images))


def test_an_interrupted_run_resumes_exactly(finished_run: Path, vote_set: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / 'interrupted'
    validate = train_votes._validation_metrics
    calls = []

    def interrupt_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's validation: epoch 1's checkpoint is written, epoch 2's is not
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    monkeypatch.setattr(train_votes, '_validation_metrics', interrupt_in_epoch_two)
    assert _train(vote_set, out) == 130
    err = capsys.readouterr().err
    assert 'interrupted; the last finished epoch is in' in err and '--resume' in err and len(err.splitlines()) == 1
    assert read_checkpoint(out / 'last.pth.tar')['epoch'] == 1 and not (out / 'model').exists()
    monkeypatch.setattr(train_votes, '_validation_metrics', validate)

    assert _train(vote_set, out, '--resume') == 0
    assert 'resuming after epoch 1' in capsys.readouterr().out
    straight, resumed = (load_file(run / 'model' / 'model.safetensors') for run in (finished_run, out))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), 'resuming changed the weights'
    a, b = ([{k: v for k, v in h.items() if k != 'cpu_s'} for h in json.loads((run / 'summary.json').read_text())[
        'history']] for run in (finished_run, out))  # all but the CPU-seconds, which are measured
    assert a == b and len(a) == 2


def test_resume_refuses_other_settings_and_a_new_run_refuses_a_used_folder(finished_run: Path, vote_set: Path,
                                                                            capsys):
    assert train_votes.main(['astroformer_small', str(vote_set), '--out', str(finished_run), '--resume',
                             '--epochs', '3', '--img-size', '16', '--batch-size', '4', '--set', 'model_ema=true',
                             'model_ema_decay=0.5', 'warmup_epochs=0']) == 2
    assert 'was written by a run with other settings: epochs=2 (now 3)' in capsys.readouterr().err
    assert _train(vote_set, finished_run) == 2  # no --resume
    assert 'holds a run of train-votes (last.pth.tar); continue it with --resume' in capsys.readouterr().err


@pytest.mark.parametrize('extra, expected', [
    (['--set', 'smoothing=0.1'], 'smoothing must be 0 with this loss'),
    (['--set', 'mixup=0.8'], 'mixup/cutmix must be 0 with this loss'),
    (['--set', 'jsd_loss=true'], 'recipe keys not implemented by timm_astro.training: jsd_loss'),
    (['--set', 'num_classes=10'], 'the recipe has num_classes=10, but the gz2 tree has 28 answers'),
    (['--batch-size', '13'], 'batch_size 13 is more than the 12 training galaxies'),
    (['--tree', 'gz3'], "tree 'gz3': no such file"),
])
def test_bad_options_are_refused_before_any_work(vote_set: Path, tmp_path: Path, capsys, extra, expected):
    out = tmp_path / 'run'
    assert _train(vote_set, out, *extra) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_folder_that_is_not_a_vote_set_is_refused(tmp_path: Path, capsys):
    classes = tmp_path / 'classes'
    classes.mkdir()
    (classes / 'dataset.json').write_text(json.dumps({'splits': {'train': 10}}))
    assert _train(classes, tmp_path / 'run') == 2
    assert 'not a vote set (its dataset.json has no "kind"' in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_trains_on_cuda(vote_set: Path, tmp_path: Path):
    assert _train(vote_set, tmp_path / 'cuda', '--device', 'cuda') == 0
    assert is_votes_model(load_votes_model(f'local-dir:{tmp_path / "cuda" / "model"}'))


def test_a_vote_set_that_names_no_tree_needs_tree(tmp_path: Path, capsys):
    data = write_vote_set(tmp_path / 'votes', per_split=(4, 2, 0))
    (data / 'dataset.json').write_text(json.dumps({'kind': 'votes'}))
    assert _train(data, tmp_path / 'run') == 2
    assert 'dataset.json: names no "tree"; give the decision tree with --tree' in capsys.readouterr().err


def test_resume_refuses_another_vote_set(finished_run: Path, vote_set: Path, tmp_path: Path, capsys):
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(finished_run, run)
    other = write_vote_set(tmp_path / 'other', per_split=(12, 6, 2), seed=1)  # the same tree, other galaxies
    assert _train(other, run, '--resume') == 2
    err = capsys.readouterr().err
    assert f'was trained on the vote set {vote_set.resolve()} (manifest.csv sha256 ' in err
    assert f'not on {other}' in err and len(err.splitlines()) == 1
    moved = tmp_path / 'moved'
    shutil.copytree(vote_set, moved)  # the same vote set elsewhere: the same galaxies, votes and splits
    assert _train(moved, run, '--resume') == 0


def test_an_unreadable_image_is_refused_before_training(tmp_path: Path, capsys):
    data = write_vote_set(tmp_path / 'votes', per_split=(4, 2, 0))
    (data / 'validation' / '001.jpg').write_bytes(b'not a jpeg')
    out = tmp_path / 'run'
    assert _train(data, out) == 2
    err = capsys.readouterr().err
    assert f'{data / "validation" / "001.jpg"}: cannot be read as an image: not an image Pillow can identify' in err
    assert '1 of the 2 validation images' in err and len(err.splitlines()) == 1
    assert not out.exists()
