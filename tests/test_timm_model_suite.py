"""timm's own model test suite (from the installed timm's sdist), run against every astroformer model.

timm parametrises its tests with ``list_models(...)``; some select by exact timm module name, so a plain
``-k astroformer`` would never reach outside models. Each test function of the suite is re-parametrised here over
our models and called as is. ``test_models_selected_by_timm`` shows that timm's own selection includes our models
wherever it is not restricted to timm's modules.

Without network (and no cached copy) the module is skipped with the reason; under CI (``CI`` set), which has PyPI,
a failed download is an error instead, so the suite can never silently drop out of CI.
"""
import os

import pytest
import timm

from timm_suite import load_test_models

try:
    suite = load_test_models()
except RuntimeError as e:
    if os.environ.get('CI'):
        raise
    pytest.skip(f"timm's test suite is unavailable offline ({e}); CI downloads it", allow_module_level=True)

SMALL_FAMILY = ['astroformer_small', 'astroformer_base', 'astroformer_large']
PAPER_FAMILY = [f'astroformer_{i}' for i in range(6)]
HEAVY = {'astroformer_4', 'astroformer_5'}  # 240M / 595M params: the full suite is opt-in (see conftest)

# test function -> extra arguments besides model_name; every model-generic test in timm 1.0.31's test_models.py
SUITE_TESTS = {
    'test_model_forward': dict(batch_size=1),
    'test_model_backward': dict(batch_size=2),
    'test_model_default_cfgs': dict(batch_size=1, cfg_device='meta'),
    'test_model_forward_torchscript': dict(batch_size=1),
    'test_model_forward_features': dict(batch_size=1),
    'test_model_forward_intermediates_features': dict(batch_size=1),
    'test_model_forward_intermediates': dict(batch_size=1),
    'test_model_forward_fx': dict(batch_size=1),
    'test_model_backward_fx': dict(batch_size=2),
    'test_model_forward_fx_torchscript': dict(batch_size=1),
    'test_prune_intermediate_layers_contract': dict(),
    'test_prune_intermediate_layers_params_used': dict(),
}
# what CI runs on the heavy models: structure on the meta device and one real forward
LIGHT_TESTS = {'test_model_default_cfgs', 'test_model_forward'}


def _cases():
    for test_name in SUITE_TESTS:
        for model_name in SMALL_FAMILY + PAPER_FAMILY:
            marks = [pytest.mark.slow] if model_name in HEAVY and test_name not in LIGHT_TESTS else []
            yield pytest.param(test_name, model_name, marks=marks, id=f'{test_name}[{model_name}]')


def test_suite_has_every_test():
    """The suite of the installed timm still has every test this file re-runs (a rename would silently drop it)."""
    missing = [name for name in SUITE_TESTS if not hasattr(suite, name)]
    assert not missing, f'timm {timm.__version__} test_models.py lacks {missing}: update SUITE_TESTS'


@pytest.mark.parametrize('test_name,model_name', list(_cases()))
def test_timm_suite(test_name, model_name):
    getattr(suite, test_name)(model_name=model_name, **SUITE_TESTS[test_name])


@pytest.mark.parametrize('test_name', [
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_fx', 'test_model_backward_fx',
])
def test_models_selected_by_timm(test_name):
    """Where timm selects models with list_models() alone, its own parametrisation already lists ours."""
    params = [m for m in getattr(suite, test_name).pytestmark if m.name == 'parametrize' and m.args[0] == 'model_name']
    selected = {name.split('.')[0] for name in params[0].args[1]}  # some list pretrained tags
    assert set(SMALL_FAMILY + PAPER_FAMILY) <= selected
