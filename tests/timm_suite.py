"""Load timm's own model test suite (tests/test_models.py of the installed timm's source distribution).

The suite is not in the timm wheel: it is downloaded from PyPI once (``pip download --no-binary :all: timm==X``) into
a cache directory and imported from there; nothing of it is kept in this repository.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import timm

CACHE_DIR = Path(os.environ.get('TIMM_ASTRO_CACHE', Path.home() / '.cache' / 'timm-astro'))


def suite_dir(version: str = timm.__version__) -> Path:
    """The ``tests`` directory of timm's sdist for ``version``, downloading and unpacking it if needed."""
    target = CACHE_DIR / f'timm-{version}-tests'
    if (target / 'test_models.py').is_file():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        try:
            result = subprocess.run(
                [sys.executable, '-m', 'pip', 'download', '--no-binary', ':all:', '--no-deps', '--quiet',
                 '--timeout', '15', '--retries', '1', f'timm=={version}', '-d', tmp],
                capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f'could not download the timm {version} source distribution: pip took over 600 s')
        archives = list(Path(tmp).glob('timm-*.tar.gz'))
        if result.returncode or not archives:
            raise RuntimeError(f'could not download the timm {version} source distribution: {result.stderr.strip()}')
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f'timm-{version}/tests/') and m.isfile()]
            tar.extractall(tmp, members=members, filter='data')
        staged = Path(tmp) / f'timm-{version}' / 'tests'
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)  # appears whole or not at all
    return target


def load_test_models() -> ModuleType:
    """Import timm's test_models.py as a module (its parametrisations see the models registered by timm_astro)."""
    path = suite_dir() / 'test_models.py'
    spec = importlib.util.spec_from_file_location('timm_suite_test_models', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
