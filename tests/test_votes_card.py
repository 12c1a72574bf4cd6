"""The export of a model trained on votes: its model card says what the outputs are and its usage example runs;
a class model's card is unchanged; an export written the earlier way (the votes keys added to config.json after the
export) loads the same."""
import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch

import timm
from timm_astro.data.decision_tree import load_tree
from timm_astro.hub import export_model
from timm_astro.votes_model import (CONCENTRATION_MAP, VOTES_TASK, export_votes_model, is_votes_model,
                                    load_votes_model)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('test_resnet', num_classes=28)


@pytest.fixture(scope='module')
def votes_export(tmp_path_factory) -> Path:
    return export_votes_model(_model(), tmp_path_factory.mktemp('export') / 'gz2-votes', load_tree('gz2'),
                              data_config={'input_size': (3, 16, 16)}, metrics={'val_fraction_mae': 0.123})


def _python_block(card: str) -> str:
    return re.search(r'```python\n(.*?)```', card, re.S).group(1)


def test_the_card_of_a_votes_model_and_its_example(votes_export: Path, tmp_path: Path, monkeypatch):
    card = (votes_export / 'README.md').read_text()
    assert 'predicting Galaxy Zoo vote fractions' in card and 'Image classification' not in card
    assert 'softmax' not in card and 'Answers: 28' in card and 'galaxy-zoo' in card
    tree = load_tree('gz2')
    for question in tree.questions:
        assert question.text in card
    assert 't02_edgeon (after t01_smooth_or_features_a02_features_or_disk)' in card

    # the example, run as written against this export: one line per answer, each question's fractions sum to 1
    from PIL import Image
    Image.new('RGB', (24, 24), (90, 60, 30)).save(tmp_path / 'galaxy.png')
    monkeypatch.chdir(tmp_path)
    code = _python_block(card).replace('hf-hub:ORG/REPO', f'local-dir:{votes_export}')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, 'model card', 'exec'), {})
    lines = printed.getvalue().splitlines()
    assert [line.split(':')[0] for line in lines] == tree.answer_names
    fractions = [float(line.split(': ')[1].split(' +- ')[0]) for line in lines]
    for columns in tree.slices:
        assert sum(fractions[columns]) == pytest.approx(1.0, abs=2e-3)


def test_a_class_model_keeps_the_classification_card(tmp_path: Path):
    out = export_model(timm.create_model('test_resnet', num_classes=3), tmp_path / 'classes',
                       label_names=['a', 'b', 'c'], data_config={'input_size': (3, 16, 16)})
    card = (out / 'README.md').read_text()
    assert 'Image classification' in card and 'softmax' in card and 'vote fractions' not in card
    assert 'task' not in json.loads((out / 'config.json').read_text())


def test_an_export_written_the_earlier_way_loads_the_same(votes_export: Path, tmp_path: Path):
    """Before the card knew the task, export_votes_model exported a plain model and added the keys afterwards:
    the same config.json, so the same model."""
    tree = load_tree('gz2')
    old = export_model(_model(), tmp_path / 'old', label_names=tree.answer_names, data_config={'input_size': (3, 16, 16)})
    config = json.loads((old / 'config.json').read_text())
    config.update(task=VOTES_TASK, tree=tree.to_dict(), concentration=CONCENTRATION_MAP,
                  label_descriptions={a.name: a.text for a in tree.answers})
    (old / 'config.json').write_text(json.dumps(config, indent=2))
    assert config == json.loads((votes_export / 'config.json').read_text())
    loaded, new = load_votes_model(f'local-dir:{old}'), load_votes_model(f'local-dir:{votes_export}')
    assert is_votes_model(loaded) and loaded.pretrained_cfg['tree'] == new.pretrained_cfg['tree'] == tree.to_dict()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(images), new(images))
