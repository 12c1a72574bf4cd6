"""Deployment formats: ``torch.export`` of every model (each W form, both families) and ONNX through timm's own
``onnx_export.py`` run by ``timm-astro run``, each checked against eager outputs."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm

FULLRES = ['astroformer_small', 'astroformer_base', 'astroformer_large']
PAPER = [f'astroformer_{i}' for i in range(6)]
HEAVY = {'astroformer_4', 'astroformer_5'}  # 240M / 595M params: opt-in, as for timm's suite (see conftest)


def _cases():
    for name in FULLRES:
        for rel_pos_type in ('fourier', 'table', 'none'):
            yield pytest.param(name, dict(rel_pos_type=rel_pos_type), id=f'{name}-{rel_pos_type}')
    for name in PAPER:
        marks = [pytest.mark.slow] if name in HEAVY else []
        yield pytest.param(name, {}, marks=marks, id=f'{name}-table')


def _export_check(name, kwargs, batch=2):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(batch, *model.pretrained_cfg['input_size'])
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
        got = exported.module()(x)
    assert (got - expected).abs().max() <= 1e-5
    return exported


@pytest.mark.parametrize('name, kwargs', list(_cases()))
def test_torch_export_equals_eager(name, kwargs):
    _export_check(name, kwargs)


@pytest.mark.skipif(not hasattr(torch.compiler, 'is_exporting'),
                    reason=f'torch {torch.__version__} cannot tell export from compile (no torch.compiler.is_exporting)')
def test_flex_model_exports_its_sdpa_form():
    """FlexAttention (attn_impl='flex') is not what an exported graph holds: it takes the SDPA form, same weights."""
    exported = _export_check('astroformer_small', dict(rel_pos_type='table', attn_impl='flex'))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == 'call_function'}
    assert 'aten.scaled_dot_product_attention.default' in targets
    assert not any('flex' in t for t in targets), sorted(targets)


def _onnx_export_script():
    """timm's onnx_export.py: $TIMM_ONNX_EXPORT_SCRIPT, else beside $TIMM_TRAIN_SCRIPT (a pytorch-image-models
    checkout, as tests/test_train_script.py uses)."""
    if os.environ.get('TIMM_ONNX_EXPORT_SCRIPT'):
        return Path(os.environ['TIMM_ONNX_EXPORT_SCRIPT'])
    if os.environ.get('TIMM_TRAIN_SCRIPT'):
        return Path(os.environ['TIMM_TRAIN_SCRIPT']).with_name('onnx_export.py')
    return None


ONNX_SCRIPT = _onnx_export_script()
ONNX_MISSING = [m for m in ('onnx', 'onnxscript', 'onnxruntime') if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(ONNX_MISSING), reason=f'ONNX export needs {ONNX_MISSING} (pip install onnx onnxscript '
                                               'onnxruntime; not in the dev extras, so CI skips this)')
@pytest.mark.skipif(ONNX_SCRIPT is None or not ONNX_SCRIPT.is_file(),
                    reason='timm\'s onnx_export.py not found: set TIMM_ONNX_EXPORT_SCRIPT, or TIMM_TRAIN_SCRIPT to '
                           'pytorch-image-models/train.py')
@pytest.mark.parametrize('name', ['astroformer_small', 'astroformer_0'])
def test_onnx_export_through_timms_script_equals_eager(tmp_path, name):
    """Both W forms: the Fourier kernel (astroformer_small) and the table (astroformer_0). onnx_export.py has no
    --model-kwargs, so the full-resolution table form cannot be selected through it (torch.export covers it)."""
    import onnxruntime
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).eval()
    checkpoint = tmp_path / 'weights.pth'
    torch.save(model.state_dict(), checkpoint)
    onnx_file = tmp_path / f'{name}.onnx'
    result = subprocess.run(
        [sys.executable, '-m', 'timm_astro', 'run', str(ONNX_SCRIPT), str(onnx_file), '--model', name,
         '--checkpoint', str(checkpoint), '--num-classes', '5', '-b', '2'],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    session = onnxruntime.InferenceSession(str(onnx_file))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = model(x)
    assert (torch.from_numpy(got) - expected).abs().max() <= 1e-4
