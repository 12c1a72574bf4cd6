#!/usr/bin/env bash
# The low-data study's GPU cells (issue 25) in one prepared run, at most 9 minutes on one H100: the models a CPU
# cannot train to convergence (astroformer_small at 32 px, astroformer_0 at 64 and 128 px) against resnet18 and
# coatnet_nano_rw_224 at 128 px, trained to convergence (validation every 25 steps, patience 4, at most 600 steps),
# lr chosen per model on validation from 3e-4 1e-3 3e-3, 3 seeds, k = 30 and 100, on the Galaxy Zoo 2 class
# benchmark. Writes lowdata_gz2_gpu.{json,md} and _curves.png / _shots.png into OUT_DIR.
#
#   bash benchmarks/gpu_study.sh DATA_DIR [OUT_DIR] [lowdata.py options]   # on the GPU machine, repository root
#   bash benchmarks/gpu_study.sh DATA_DIR out/gs --dry-run                # here, on the CPU: every path, tiny
#
# DATA_DIR is an ImageFolder with train/, validation/ and test/ (`timm-astro import gz2-votes SRC OUT` writes one:
# see benchmarks/README.md). OUT_DIR defaults to $OUT, else benchmarks/results. Runs start until 7 minutes have
# passed (--time-budget-s) and a run that hangs is stopped at 8.5 minutes; what is done is reported either way, and
# `--resume` with the same OUT_DIR goes on (the weights waiting for test live in the cache folder, /tmp/lowdata_cache
# unless LOWDATA_CACHE says otherwise). Extra options go to lowdata.py last, so they override these.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash benchmarks/gpu_study.sh DATA_DIR [OUT_DIR] [--dry-run] [lowdata.py options]" >&2
    exit 2
fi
data="$1"
shift
out="${OUT:-benchmarks/results}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    out="$1"
    shift
fi
dry=0
extra=()
for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then dry=1; else extra+=("$arg"); fi
done
if [ "$data" != synthetic ] && ! [ -d "$data/train" -a -d "$data/validation" -a -d "$data/test" ]; then
    echo "$data: expected an ImageFolder with train/, validation/ and test/ (timm-astro import gz2-votes SRC OUT)" >&2
    exit 2
fi
data="$(cd "$data" 2>/dev/null && pwd || echo "$data")"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$out"
python="${PYTHON:-python3}"
if [ "$dry" = 1 ]; then
    # the same command on the CPU with tiny settings: every code path, no GPU, a minute or two
    args=(--device cpu --jobs 1 --workers 0 --models resnet18@16 'astroformer_small[rel_pos_type=none]@16'
          --shots 2 --seeds 0 --lr-grid 1e-3 --converge --eval-every 1 --patience 1 --max-steps 2
          --set batch_size=4 --n-boot 200 --time-budget-s 300)
    limit=600
else
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv || true
    # six single-threaded runs share the GPU (small models leave it mostly idle), two loader workers each
    args=(--device cuda --jobs 6 --workers 2 --eval-batch-size 250
          --models astroformer_small@32 astroformer_0@64 astroformer_0@128 resnet18@128 coatnet_nano_rw_224@128
          --shots 30 100 --seeds 0 1 2 --lr-grid 3e-4 1e-3 3e-3 --converge --eval-every 25 --patience 4
          --max-steps 600 --time-budget-s 420)
    limit=510
fi
timeout "$limit" "$python" benchmarks/lowdata.py --data-dir "$data" --out-dir "$out" --name lowdata_gz2_gpu \
    --cache-dir "${LOWDATA_CACHE:-/tmp/lowdata_cache}" "${args[@]}" "${extra[@]}" 2>&1 | tee "$out/lowdata_gz2_gpu.log"
