"""Shared test set-up: the models are registered before collection, slow tests are opt-in."""
import os

import pytest

import timm_astro  # noqa: F401  registers the models before any test module calls timm.list_models

RUN_SLOW_ENV = 'TIMM_ASTRO_RUN_SLOW'


def pytest_addoption(parser):
    parser.addoption('--run-slow', action='store_true', help=f'run tests marked slow (or set {RUN_SLOW_ENV}=1)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--run-slow') or os.environ.get(RUN_SLOW_ENV) == '1':
        return
    skip = pytest.mark.skip(reason=f'slow (e.g. timm suite on the 240M/595M-param models): run with --run-slow or {RUN_SLOW_ENV}=1')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)
