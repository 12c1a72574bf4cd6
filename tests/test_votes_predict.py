"""`timm-astro predict` with a votes model: the expected fraction and the Dirichlet spread of every answer per image,
checked against a model whose concentrations are known; an interrupted run resumed to the same CSV; a resume of
another run, --tta, --label-names and a tree that does not fit the head refused in one line with nothing written."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import timm_astro.losses
from timm_astro.commands.predict import main
from timm_astro.data.decision_tree import load_tree
from timm_astro.votes_model import export_votes_model

from test_votes_evaluate import T01_LOGITS, constant_votes_model, expected_t01_fractions

TREE = load_tree('gz2')


@pytest.fixture(scope='module')
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('models') / 'votes'
    return export_votes_model(constant_votes_model(), out, TREE, data_config={'input_size': (3, 16, 16),
                                                                              'crop_pct': 1.0})


@pytest.fixture()
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(10):
        (tmp_path / 'cutouts' / f'{i % 2}').mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / 'cutouts' / f'{i % 2}' / f'g{i:02d}.png')
    return tmp_path / 'cutouts'


def _predict(export: Path, folder: Path, out: Path, *extra: str) -> int:
    return main([f'local-dir:{export}', str(folder), '--out', str(out), '--batch-size', '4', '--workers', '0',
                 '--no-progress', *extra])


def _rows(path: Path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_fractions_and_spread_per_image(export: Path, folder: Path, tmp_path: Path, capsys):
    out = tmp_path / 'fractions.csv'
    assert _predict(export, folder, out) == 0
    assert '10 images predicted' in capsys.readouterr().out
    rows = _rows(out)
    names = TREE.answer_names
    assert list(rows[0]) == ['path'] + [f'fraction_{a}' for a in names] + [f'std_{a}' for a in names]
    assert [r['path'] for r in rows] == sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*.png'))
    # the first question's concentrations, written out: 1 + 99 sigmoid(logit); the other answers' logits are 0
    alpha = 1 + 99 / (1 + np.exp(-np.array(T01_LOGITS)))
    total = alpha.sum()
    spread = np.sqrt(alpha * (total - alpha) / (total ** 2 * (total + 1)))
    for row in rows:
        first = [a.name for a in TREE.questions[0].answers]
        assert [float(row[f'fraction_{a}']) for a in first] == pytest.approx(expected_t01_fractions(), abs=2e-6)
        assert [float(row[f'std_{a}']) for a in first] == pytest.approx(spread, abs=2e-6)
        for question in TREE.questions:
            assert sum(float(row[f'fraction_{a.name}']) for a in question.answers) == pytest.approx(1, abs=1e-5)
        edge_on = [float(row[f'fraction_{a.name}']) for a in TREE.questions[1].answers]  # equal logits: equal shares
        assert edge_on == pytest.approx([0.5, 0.5], abs=1e-6)


def test_an_interrupted_run_resumes_to_the_same_csv(export: Path, folder: Path, tmp_path: Path, capsys,
                                                    monkeypatch):
    straight = tmp_path / 'straight.csv'
    assert _predict(export, folder, straight) == 0
    out, partial = tmp_path / 'fractions.csv', tmp_path / '.fractions.csv.partial'
    real, calls = timm_astro.losses.to_concentrations, []

    def stop_at_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    with monkeypatch.context() as m:
        m.setattr(timm_astro.losses, 'to_concentrations', stop_at_second_batch)
        assert _predict(export, folder, out) == 130
    assert 'interrupted; 4 predictions so far are kept in' in capsys.readouterr().err
    assert len(_rows(partial)) == 4 and not out.exists()
    assert _predict(export, folder, out, '--resume') == 0
    printed = capsys.readouterr().out
    assert '6 images predicted' in printed and '4 kept from the interrupted run' in printed
    assert out.read_bytes() == straight.read_bytes() and not partial.exists()


def test_a_class_run_is_not_resumed_by_a_votes_model(export: Path, folder: Path, tmp_path: Path, capsys,
                                                     monkeypatch):
    import timm_astro.evaluation.predict as predict
    out, partial = tmp_path / 'fractions.csv', tmp_path / '.fractions.csv.partial'
    real, calls = predict.view_probabilities, []

    def stop(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    with monkeypatch.context() as m:  # a class model's run over the same images, interrupted
        m.setattr(predict, 'view_probabilities', stop)
        assert main(['test_resnet', str(folder), '--num-classes', '3', '--out', str(out), '--img-size', '16',
                     '--batch-size', '4', '--workers', '0', '--no-progress']) == 130
    kept = partial.read_bytes()
    capsys.readouterr()
    assert _predict(export, folder, out, '--resume') != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'used other weights' in err and '--overwrite' in err
    assert partial.read_bytes() == kept and not out.exists()


@pytest.mark.parametrize('extra, expected', [
    (['--tta', 'd4'], '--tta d4: test-time symmetry is for class models'),
    (['--label-names', 'a,b'], '--label-names: a votes model names its own outputs, the 28 answers'),
])
def test_class_options_are_refused(extra, expected, export: Path, folder: Path, tmp_path: Path, capsys):
    out = tmp_path / 'fractions.csv'
    assert _predict(export, folder, out, *extra) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cutouts']


def test_a_tree_that_does_not_fit_the_head_is_refused(export: Path, folder: Path, tmp_path: Path, capsys):
    bad = tmp_path / 'bad_export'
    shutil.copytree(export, bad)
    config = json.loads((bad / 'config.json').read_text())
    config['tree']['questions'] = config['tree']['questions'][:-1]  # 25 answers for a head of 28
    (bad / 'config.json').write_text(json.dumps(config))
    assert _predict(bad, folder, tmp_path / 'fractions.csv') != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'its tree has 25 answers but the model has 28 outputs' in err
    assert not (tmp_path / 'fractions.csv').exists()
