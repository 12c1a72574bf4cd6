"""The README's model table is the output of `timm-astro models`, and its Python snippets run."""
import re
from pathlib import Path

import pytest

from timm_astro.commands.models import main as models_main

README = Path(__file__).resolve().parents[1] / 'README.md'
NOT_RUNNABLE = '# (needs'  # a snippet starting with e.g. "# (needs the Hub)" is shown, not run


def _python_snippets():
    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
    return [b for b in blocks if not b.lstrip().startswith(NOT_RUNNABLE)]


def test_model_table_is_generated(capsys):
    text = README.read_text()
    table = re.search(r'<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->', text, flags=re.S).group(1)
    models_main([])
    assert table.strip() == capsys.readouterr().out.strip(), 'README table is stale: paste `timm-astro models`'


@pytest.mark.parametrize('index', range(len(_python_snippets())))
def test_python_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_snippets()[index], f'README snippet {index}', 'exec'), {'__name__': '__readme__'})
