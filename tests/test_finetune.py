"""Fine-tuning from a pretraining, as timm's train.py does it, for both Astroformer families and a timm peer.

train.py's ``--pretrained --pretrained-path FILE`` builds the model with ``pretrained=True`` and
``pretrained_cfg_overlay=dict(file=FILE, num_classes=-1)`` (without ``--pretrained`` it ignores the path): timm's
``load_pretrained`` loads every weight but the classifier's (named by the model's pretrained cfg), which keeps its
fresh initialisation for the new classes.
``--layer-decay`` groups parameters with the model's ``group_matcher``; freezing is timm's ``freeze``. These tests
make the same calls on checkpoints in the two formats a pretraining leaves: train.py's ``model_best.pth.tar`` and
``timm-astro export``'s ``model.safetensors``.
"""
import sys
from pathlib import Path

import pytest
import torch

import timm
import timm_astro  # noqa: F401  (registers the models)
from timm.optim import create_optimizer_v2
from timm.utils.model import freeze

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import lowdata  # noqa: E402

# (model, the kwargs that make it small and quick, input size)
MODELS = [
    ('astroformer_small', dict(img_size=16), 16),
    ('astroformer_0', dict(img_size=64), 64),
    ('resnet18', {}, 32),
]
IDS = [m[0] for m in MODELS]


def _pretraining(tmp_path: Path, name: str, kwargs: dict, fmt: str) -> tuple:
    """A 6-class model's weights saved as a pretraining leaves them; returns (file, state dict)."""
    torch.manual_seed(1)
    source = timm.create_model(name, num_classes=6, **kwargs)
    state = source.state_dict()
    if fmt == 'train.py':
        path = tmp_path / 'model_best.pth.tar'
        torch.save({'epoch': 3, 'arch': name, 'state_dict': state, 'metric': 50.0}, path)
    else:
        from safetensors.torch import save_file
        path = tmp_path / 'model.safetensors'
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def _finetuned(name: str, kwargs: dict, path: Path, num_classes: int = 10) -> torch.nn.Module:
    """The model train.py builds for ``--model NAME --num-classes N --pretrained-path PATH``."""
    return timm.create_model(name, num_classes=num_classes, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=-1), **kwargs)


@pytest.mark.parametrize('fmt', ['train.py', 'safetensors'])
@pytest.mark.parametrize('name,kwargs,size', MODELS, ids=IDS)
def test_pretrained_path_loads_the_backbone_and_swaps_the_head(tmp_path, name, kwargs, size, fmt):
    path, state = _pretraining(tmp_path, name, kwargs, fmt)
    torch.manual_seed(2)
    model = _finetuned(name, kwargs, path)
    classifier = model.pretrained_cfg['classifier']
    loaded = model.state_dict()
    assert loaded[f'{classifier}.weight'].shape[0] == 10
    assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 10)
    backbone = [k for k in state if not k.startswith(classifier + '.')]
    assert len(backbone) == len(state) - 2
    for key in backbone:
        assert torch.equal(loaded[key], state[key]), f'{key} did not come from the pretraining'
    # the new head is not the old one cut down: it was initialised afresh
    assert not torch.equal(loaded[f'{classifier}.weight'][:6], state[f'{classifier}.weight'])


@pytest.mark.parametrize('name,kwargs,size', MODELS[:2], ids=IDS[:2])
def test_layer_decay_scales_the_lr_from_stem_to_head(name, kwargs, size):
    """train.py's --layer-decay 0.5: every parameter in exactly one group, the head at the full lr, each earlier
    layer at a smaller one, the stem smallest."""
    model = timm.create_model(name, num_classes=10, **kwargs)
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    owner = {}
    for group in opt.param_groups:
        for p in group['params']:
            assert id(p) not in owner, 'a parameter in two groups'
            owner[id(p)] = group['lr_scale']
    params = dict(model.named_parameters())
    assert set(owner) == {id(p) for p in params.values()}
    stem = max(owner[id(p)] for n, p in params.items() if n.startswith('stem'))
    last_stage = min(owner[id(p)] for n, p in params.items() if n.startswith(f'stages.{len(model.stages) - 1}'))
    head = min(owner[id(p)] for n, p in params.items() if n.startswith('head'))
    assert stem < last_stage < head == 1.0
    assert len({round(s, 12) for s in owner.values()}) > 4


@pytest.mark.parametrize('name,kwargs,size', MODELS[:2], ids=IDS[:2])
def test_freezing_the_stem_and_first_stage_trains_only_the_rest(name, kwargs, size):
    """timm's freeze(): frozen parameters get no gradient and do not move in a training step; BatchNorm in the
    frozen part keeps its running statistics (timm swaps it for FrozenBatchNorm2d); the rest trains."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    freeze(model, ['stem', 'stages.0'])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(('stem.', 'stages.0.'))}
    buffers = {n: b.clone() for n, b in model.named_buffers() if n.startswith(('stem.', 'stages.0.'))}
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    trainable = [p for n, p in model.named_parameters() if n not in frozen]
    assert trainable and all(p.requires_grad for p in trainable)
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, size, size)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    for n, b in model.named_buffers():
        if n in buffers:
            assert torch.equal(b, buffers[n]), f'{n} changed in a frozen part'
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before))


def test_lowdata_fine_tunes_from_a_pretrained_path_relative_to_its_folder(tmp_path):
    """benchmarks/lowdata.py's NAME[pretrained_path=FOLDER/FILE]@SIZE: the folder names the pretraining, the
    scratch model is the spec without it, and the model is the one train.py's --pretrained-path builds."""
    (tmp_path / 'gz2').mkdir()
    path, state = _pretraining(tmp_path / 'gz2', 'astroformer_small', dict(img_size=16), 'train.py')
    spec = 'astroformer_small[rel_pos_type=table,pretrained_path=gz2/model_best.pth.tar]@16'
    assert lowdata.pretraining_of(spec) == 'gz2' and lowdata.pretraining_of('resnet18@64') == ''
    assert lowdata.scratch_spec(spec) == 'astroformer_small[rel_pos_type=table]@16'
    assert lowdata.scratch_spec('resnet18[pretrained_path=a/b.pt]@64') == 'resnet18@64'
    recipe = dict(drop_path=0.0)
    model, size = lowdata.build_model('astroformer_small[pretrained_path=gz2/model_best.pth.tar]@16', 10, recipe, 0,
                                      tmp_path)
    assert size == 16 and model.get_classifier().out_features == 10
    assert torch.equal(model.state_dict()['stem.conv1.conv.weight'], state['stem.conv1.conv.weight'])
    scratch, _ = lowdata.build_model('astroformer_small[pretrained_path=gz2/model_best.pth.tar]@16', 10, recipe, 0,
                                     tmp_path, load_pretrained=False)
    assert not torch.equal(scratch.state_dict()['stem.conv1.conv.weight'], state['stem.conv1.conv.weight'])
    with pytest.raises(SystemExit, match=r'pretrained_path gz2/missing.pt is not a file under --pretrained-dir'):
        lowdata.build_model('resnet18[pretrained_path=gz2/missing.pt]@32', 10, recipe, 0, tmp_path)


def test_paper_family_pretrained_as_train_py_builds_it_loads_at_another_size(tmp_path):
    """train.py never passes img_size, so an astroformer_0 it pretrains has S4 bias tables for 224 px; a model
    built for 64 px (benchmarks/lowdata.py, timm-astro's loaders) gets them resized by the model's checkpoint
    filter, and the rest unchanged."""
    torch.manual_seed(1)
    state = timm.create_model('astroformer_0', num_classes=6).state_dict()
    torch.save({'state_dict': state}, tmp_path / 'model_best.pth.tar')
    model = _finetuned('astroformer_0', dict(img_size=64), tmp_path / 'model_best.pth.tar')
    loaded = model.state_dict()
    table = 'stages.3.blocks.0.attn.rel_pos.relative_position_bias_table'
    assert state[table].shape[0] == 13 * 13 and loaded[table].shape[0] == 3 * 3
    others = [k for k in state if 'relative_position' not in k and not k.startswith('head.fc.')]
    assert all(torch.equal(loaded[k], state[k]) for k in others)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
