#!/usr/bin/env bash
# The prepared GPU check: one command for whoever is lent a CUDA device (about 8 minutes on one H100/H200).
#   1. the `gpu` tests: every na2d/gather_attention backend against the torch reference on CUDA, a NAT model's
#      training step on the CUDA backends against the reference;
#   2. `attnzoo bench kernels` on CUDA (bf16): na2d per backend next to Swin window attention and full attention
#      through SDPA at NAT-Tiny's stage shapes, and gather_attention;
#   3. `attnzoo bench models` on CUDA (bf16 autocast, batch 64, 224x224, eager): attnzoo's tiny/small models next
#      to timm's swin_tiny, davit_tiny, focalnet_tiny_srf and convnext_tiny.
# Writes (replacing) gpu-tests.xml, kernels-cuda.json, models-cuda.json and gpu-check.log to benchmarks/ (or to $1).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]; PYTHON=/path/to/python picks the interpreter (default python3).
# attnzoo is installed without dependencies if it is not importable: a GPU image has torch, triton and timm.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu-check.log") 2>&1

"$PY" -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check.sh: no CUDA device'); \
print(torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 2
"$PY" -c "import attnzoo" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . || exit 2
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0

status=0
step() {  # step SECONDS COMMAND...: run with a time limit, record a failure and go on
    local limit=$1
    shift
    echo "== $* (limit ${limit} s)"
    timeout "$limit" "$@" || { echo "== FAILED with status $?: $*"; status=1; }
}
attnzoo() { "$PY" -c "from attnzoo.tools.cli import main; main()" "$@"; }

step 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/zoo/test_gpu_models.py --junitxml "$OUT_DIR/gpu-tests.xml"
step 120 attnzoo bench kernels --min-run-time 0.3 --json "$OUT_DIR/kernels-cuda.json" --force
step 150 attnzoo bench models nat_tiny dinat_tiny litv2_small quadtree_b1 agent_swin_tiny sparsifiner_deit_small \
    swin_tiny_patch4_window7_224 davit_tiny focalnet_tiny_srf convnext_tiny \
    --batch 64 --precision bf16 --min-run-time 0.5 --json "$OUT_DIR/models-cuda.json" --force
echo "== gpu_check.sh finished with status $status"
exit $status
