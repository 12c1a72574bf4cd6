"""Astroformer models under DistributedDataParallel: 2 CPU processes, gloo backend, like train.py on 2 GPUs.

train.py itself cannot run multi-process on CPU (it passes ``device_ids=[cpu]`` to DistributedDataParallel, which
raises), so the workers here do what train.py does on GPUs, with torch.distributed directly:

* gradients are synchronized: after backward, each rank's DDP gradient equals the average of every rank's local
  gradient (computed without DDP on the same inputs), and the parameters stay identical after an optimizer step;
* no unused parameters: every trainable parameter gets a gradient, so ``find_unused_parameters=False`` (train.py's
  setting) works, including the second iteration, where DDP would otherwise raise;
* ``--sync-bn`` conversion: timm's convert_sync_batchnorm replaces every BatchNorm, keeps the state dict (so
  checkpoints load into the plain model) and leaves eval outputs unchanged. PyTorch runs SyncBatchNorm only on
  GPUs (DDP refuses to wrap it on CPU and its training-mode forward raises), so the synchronized statistics
  themselves are not exercised here.
"""
import copy
import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import timm
import timm_astro  # noqa: F401  (registers the models; forked workers inherit it, as --device-modules gives
# every train.py process)
from timm.layers import convert_sync_batchnorm

WORLD_SIZE = 2
TIMEOUT_S = 120
# (model, input size): one of each family, small enough for CPU
MODELS = [('astroformer_small', 32), ('astroformer_0', 64)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _batchnorms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _check_ddp_step(name: str, size: int, rank: int) -> dict:
    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = timm.create_model(name, num_classes=5, drop_rate=0.0, drop_path_rate=0.0)
    local = copy.deepcopy(model)
    ddp = DistributedDataParallel(model, device_ids=None, find_unused_parameters=False)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    for step in range(2):  # the second step is where DDP raises if a parameter was unused in the first
        gen = torch.Generator().manual_seed(100 * step + rank)  # different data on each rank
        x = torch.randn(2, 3, size, size, generator=gen)
        y = torch.randint(0, 5, (2,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(ddp(x), y).backward()

        unused = [n for n, p in named if p.grad is None]
        assert not unused, f'{name}: parameters without a gradient (unused): {unused[:5]}'
        if step == 0:
            # local gradients on the same data, without DDP, averaged over ranks by hand
            local.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(local(x), y).backward()
            for (n, p), (_, q) in zip(named, [(n, q) for n, q in local.named_parameters() if q.requires_grad]):
                expected = q.grad.detach().clone()
                dist.all_reduce(expected)
                expected /= WORLD_SIZE
                assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-6), f'{name}: {n} not synchronized'
            differs = any(not torch.allclose(p.grad, q.grad) for (_, p), q in zip(
                named, [q for q in local.parameters() if q.requires_grad]))
            assert differs, f'{name}: ranks saw different data, so local and averaged gradients should differ'
        optimizer.step()

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered[1:]), f'{name}: parameters diverged across ranks'

    # --sync-bn: train.py converts with timm's convert_sync_batchnorm before wrapping in DDP
    plain = copy.deepcopy(model).eval()
    n_bn = len(_batchnorms(plain))
    assert n_bn > 0, f'{name} has no BatchNorm: the SyncBatchNorm check would be empty'
    synced = convert_sync_batchnorm(copy.deepcopy(model))
    n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    left = [type(m).__name__ for m in _batchnorms(synced) if not isinstance(m, nn.SyncBatchNorm)]
    assert n_sync == n_bn and not left, f'{name}: {n_sync}/{n_bn} BatchNorms converted, left: {left}'
    sd_plain, sd_sync = plain.state_dict(), synced.state_dict()
    assert sd_plain.keys() == sd_sync.keys(), f'{name}: SyncBatchNorm changed the state dict keys'
    assert all(torch.equal(sd_plain[k], sd_sync[k]) for k in sd_plain)
    fresh = timm.create_model(name, num_classes=5)
    fresh.load_state_dict(sd_sync)  # a --sync-bn checkpoint loads into the plain model
    synced.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.allclose(synced(x), plain(x), rtol=1e-4, atol=1e-5), f'{name}: SyncBatchNorm eval differs'
    return dict(params=len(named), batchnorms=n_bn, syncbatchnorms=n_sync)


def _worker(rank: int, port: int, out_dir: str):
    torch.set_num_threads(1)  # two processes on a shared CPU
    dist.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD_SIZE,
        timeout=timedelta(seconds=TIMEOUT_S))
    try:
        result = {name: _check_ddp_step(name, size, rank) for name, size in MODELS}
        result['world_size'] = dist.get_world_size()
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason='torch.distributed with gloo '
                    'is not available in this PyTorch build')
def test_ddp_two_processes(tmp_path: Path):
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    # fork where there is one: spawned workers would each re-import torch, seconds apiece on a busy CPU
    method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
    context = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=False, start_method=method)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):  # raises ProcessRaisedException with the worker's traceback
            assert time.monotonic() < deadline, f'DDP workers still running after {TIMEOUT_S}s'
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
    results = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(WORLD_SIZE)]
    assert results[0] == results[1]
    assert results[0]['world_size'] == WORLD_SIZE
    for name, _ in MODELS:
        assert results[0][name]['params'] > 0 and results[0][name]['syncbatchnorms'] > 0
