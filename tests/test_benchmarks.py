"""benchmarks/: the scripts run end to end with tiny settings and write their JSON, markdown and PNG; the
benchmark-side model variants compute what they claim to. Behaviour only: no timing is asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / 'benchmarks'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

sys.path.insert(0, str(BENCHMARKS))
import baselines  # noqa: E402
import speed  # noqa: E402


# One thread: on a shared CPU two OpenMP threads that wait on each other can make tiny steps many times slower.
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def run_script(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_speed_writes_json_markdown_and_plot(tmp_path):
    run_script(
        'speed.py', '--models', 'astroformer_small/fused', 'astroformer_small/explicit',
        '--fullres-models', 'astroformer_small', '--batch-size', '2', '--warmup', '1', '--repeats', '2',
        '--min-repeat-time', '0', '--min-cpu-util', '0', '--dtypes', 'fp32', '--no-flops', '--out-dir', str(tmp_path),
        '--name', 'smoke')
    report = json.loads((tmp_path / 'smoke.json').read_text())
    rows = {(r['key'], r['dtype']): r for r in report['rows']}
    assert set(rows) == {('astroformer_small/fused', 'fp32'), ('astroformer_small/explicit', 'fp32')}
    for row in rows.values():
        assert not row['errors']
        for phase in ('infer', 'train'):
            assert row[phase]['repeats'] == 2 and row[phase]['img_s'] > 0
            assert row[phase]['img_s_min'] <= row[phase]['img_s'] <= row[phase]['img_s_max']
        assert row['train']['mem_inc_mb'] > 0  # the step allocates activations above the idle baseline
        assert row['params'] > 0
    assert rows[('astroformer_small/explicit', 'fp32')]['vs_baseline']['train'] == pytest.approx(1.0)
    fused = rows[('astroformer_small/fused', 'fp32')]
    assert fused['baseline'] == 'astroformer_small/explicit' and fused['vs_baseline']['train'] > 0
    targets = {t['target'] for t in report['targets']}
    assert {'train throughput >= 2x explicit', 'train peak memory <= 1/3 of explicit'} <= targets
    assert report['machine']['cpu_model'] and report['machine']['torch'] == torch.__version__
    markdown = (tmp_path / 'smoke.md').read_text()
    assert '`astroformer_small/fused`' in markdown and '## Targets' in markdown
    assert (tmp_path / 'smoke.png').read_bytes()[:8] == PNG_SIGNATURE

    # --rerender rebuilds the markdown and plot from the JSON alone, identical to what the run wrote
    (tmp_path / 'smoke.md').unlink()
    (tmp_path / 'smoke.png').unlink()
    run_script('speed.py', '--rerender', '--out-dir', str(tmp_path), '--name', 'smoke')
    assert (tmp_path / 'smoke.md').read_text() == markdown
    assert (tmp_path / 'smoke.png').read_bytes()[:8] == PNG_SIGNATURE


def test_speed_rejects_unknown_rows(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / 'speed.py'), '--models', 'no_such_model', '--dtypes',
                           'fp32', '--out-dir', str(tmp_path)], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode != 0 and 'matches no row' in proc.stderr


def test_explicit_and_contiguous_variants_compute_the_same_function():
    import timm
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=5).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fused = model(x)
        assert baselines.set_attention_impl(model, False) == 1
        explicit = model(x)
        baselines.set_attention_impl(model, True)
        assert baselines.contiguous_attention_inputs(model) == 1
        contiguous = model(x)
    torch.testing.assert_close(explicit, fused, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(contiguous, fused, rtol=1e-5, atol=1e-5)


def test_free_kernel_variant_skips_only_the_attention_kernel():
    """The patched attention returns proj(values): every op but the kernel runs, and gradients still flow."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=5)
    attn = model.stages[-1].blocks[0].attn
    x = torch.randn(2, 256, 6, 5)
    shipped = attn(x)
    assert baselines.free_attention_kernel(model) == 1
    with torch.no_grad():
        q, k, v = attn.qkv_heads(x)
        values_only = attn.proj(v.transpose(-1, -2).reshape(2, -1, 6, 5))
    patched = attn(x)
    torch.testing.assert_close(patched, values_only)
    assert not torch.allclose(patched, shipped)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert attn.qkv.weight.grad is not None and attn.qkv.weight.grad.abs().sum() > 0


def test_plain_design_model_replaces_only_the_transformer_stage():
    import timm
    plain = baselines.plain_design_model(num_classes=7)
    reference = timm.create_model('astroformer_base', num_classes=7)
    assert isinstance(plain.stages[-1], baselines.PlainRelativeAttention)
    for index in range(len(reference.stages) - 1):
        assert type(plain.stages[index]) is type(reference.stages[index])
    out = plain(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 7)
    block = baselines.PlainRelativeAttention(8)
    assert block(torch.randn(1, 8, 5, 6)).shape == (1, 8, 5, 6)


def test_official_maxxvit_has_the_astroformer_parameters():
    import timm
    ours = timm.create_model('astroformer_0', num_classes=3)
    official = baselines.official_maxxvit('astroformer_0', num_classes=3)
    assert set(ours.state_dict()) == set(official.state_dict())


def test_results_quote_the_committed_run():
    """Tables that RESULTS.md quotes from results/*.md are, line for line, in those files (no hand-typed drift)."""
    import re
    text = (BENCHMARKS / 'RESULTS.md').read_text()
    quotes = list(re.finditer(r'<!-- quoted from (results/[\w.-]+\.md) -->\n((?:\|.*\n)+)', text))
    assert quotes, 'RESULTS.md quotes no table from results/'
    for quote in quotes:
        source = (BENCHMARKS / quote.group(1)).read_text().splitlines()
        missing = [line for line in quote.group(2).splitlines() if line not in source]
        assert not missing, f'lines of RESULTS.md not in {quote.group(1)}: {missing}'
    for link in re.findall(r'\]\((results/[^)]+)\)', text):
        assert (BENCHMARKS / link).exists(), f'RESULTS.md links a missing file: {link}'


@pytest.mark.parametrize('value, spread, limit, higher, expected', [
    (2.1, (1.9, 2.3), 2.0, True, 'met'),
    (1.9, (1.7, 2.1), 2.0, True, 'within noise'),
    (1.4, (1.3, 1.5), 2.0, True, 'missed'),
    (0.30, None, 1 / 3, False, 'met'),
    (0.39, None, 1 / 3, False, 'missed'),
    (0.7, (0.6, 0.8), None, True, ''),
])
def test_target_verdicts(value, spread, limit, higher, expected):
    met = None if limit is None else (value >= limit if higher else value <= limit)
    check = {'value': value, 'range': spread, 'limit': limit, 'higher_is_better': higher, 'met': met}
    assert speed.verdict(check) == expected
