#!/usr/bin/env bash
# FDConv on one CUDA GPU: correctness, then speed. Under 8 minutes on one H200 (each step has its own time limit).
#
#   bash benchmarks/gpu_check.sh [path/to/official/FDConv.py]
#
# Uses the machine's own python3 with torch, timm and transformers (PYTHON=... to choose another); the
# package runs from this checkout (PYTHONPATH), nothing is installed. Prints:
#   1. cuda_check.py: the official test vectors, converted models vs their sources, and active attentions
#      forward and backward (float32, bfloat16) against float64 on the CPU;
#   2. bench_layer.py on CUDA: the ResNet-50 layer shapes, with the official layer if given;
#   3. bench_dense.py on CUDA: the dense-resolution table in float32 and in bfloat16, eager, then compiled
#      rows for ResNet-50 at 512x512.
# Exits non-zero if a correctness check fails; a benchmark step that fails or runs out of time is reported
# and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
OFFICIAL=()
if [[ $# -ge 1 ]]; then OFFICIAL=(--official "$1"); fi
status=0

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, say how it ended
    local limit=$1 title=$2; shift 2
    echo; echo "## $title"; echo
    local start=$SECONDS
    timeout "$limit" "$@"; local rc=$?
    if [[ $rc -eq 124 ]]; then echo "($title: stopped at its ${limit} s limit)"; else echo "($title: exit $rc, $((SECONDS - start)) s)"; fi
    return $rc
}

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 1
step 45 "CUDA correctness" "$PYTHON" benchmarks/cuda_check.py || status=1
step 75 "Layer benchmark, CUDA float32" "$PYTHON" benchmarks/bench_layer.py --device cuda --no-condconv --markdown "${OFFICIAL[@]}"
DENSE=(resnet50:512x512:2 convnext_tiny:512x512:2 swin_tiny_patch4_window7_224:512x512:2 resnet50:800x1333:1 resnet50:224x224:8:classifier)
# Eager and compiled tables are separate steps, so that a slow compilation cannot cost the eager table.
step 90 "Dense table, CUDA float32, eager" "$PYTHON" benchmarks/bench_dense.py --device cuda --markdown --settings "${DENSE[@]}" "${OFFICIAL[@]}"
step 90 "Dense table, CUDA bfloat16 autocast, eager" "$PYTHON" benchmarks/bench_dense.py --device cuda --dtype bfloat16 --markdown --settings "${DENSE[@]}"
for dtype in float32 bfloat16; do
    step 75 "Dense table, CUDA $dtype, compiled" "$PYTHON" benchmarks/bench_dense.py --device cuda --dtype "$dtype" --markdown \
        --no-memory --settings resnet50:512x512:2 --compile resnet50:512x512:2
done
exit $status
