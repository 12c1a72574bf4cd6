#!/usr/bin/env bash
# The GPU check of issue #13 in one prepared run (at most 8 minutes on one H200): the FlexAttention table check and
# training-step figures, written as gpu_check.json + gpu_check.md into $1, else $OUT, else benchmarks/results/gpu.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]           # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh /tmp/gc --device cpu --dry-run    # here, without a GPU: exercises every path
#
# It needs torch with CUDA and timm >= 1.0.31 importable; the repository itself is put on PYTHONPATH (no install,
# no network). Wheels in .whl/ (see the device notes) are installed to /tmp/site first if present.
set -euo pipefail
cd "$(dirname "$0")/.."
# the first argument is the output folder unless it is an option
out="${OUT:-benchmarks/results/gpu}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    out="$1"
    shift
fi
if compgen -G '.whl/*.whl' >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 - <<'EOF'
import torch, timm
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)
if tuple(int(p) for p in timm.__version__.split('.')[:3]) < (1, 0, 31):
    raise SystemExit(f'timm {timm.__version__} is older than 1.0.31 (timm_astro needs it): carry a wheel in .whl/')
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# the committed CUDA test (skipped on a CPU), then the figures: the script's budget (270 s) stops starting rows,
# the 330 s timeout stops a row that hangs; with set-up that keeps the whole run under 8 minutes
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_relative_attention.py -k cuda -rs 2>&1 \
    | tee "$out/pytest_cuda.log" || true
timeout 330 python3 benchmarks/gpu_check.py --out "$out" --budget-s 270 "$@" 2>&1 | tee "$out/gpu_check.log"
