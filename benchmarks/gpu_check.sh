#!/usr/bin/env bash
# FDConv on one CUDA GPU: correctness, then the times the cost model predicts. Under 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh [path/to/official/FDConv.py]   # writes benchmarks/results/<gpu-name-slug>.json
#   bash benchmarks/gpu_check.sh --dry-run                       # the same script on the CPU, tiny sizes (seconds)
#
# Uses the machine's own python3 with torch, timm and transformers (PYTHON=... to choose another); the
# package runs from this checkout (PYTHONPATH), nothing is installed. One process, benchmarks/gpu_measure.py:
#   1. cuda_check.py's checks on the device: the official test vectors, converted models against their sources,
#      active attentions forward and backward (float32, bfloat16) against float64 on the CPU;
#   2. ResNet-50 features at 512x512 and 800x1333 (batch 2), base / FDConv (/ official, eager): eval forward,
#      training step and peak training memory; eager float32 and bfloat16 autocast, then the compiled graph's
#      kernels on the device (ResNet-18 128x128, batch 1: Triton kernels, the launches issue 33's compiled
#      target is about), then torch.compile and mode="reduce-overhead" (CUDA-graph replay), until BUDGET seconds
#      (default 380) have passed.
# The JSON file is rewritten after each cell; a hard limit (LIMIT, default 470 s) stops the whole run, keeping
# the cells already measured. OUT=path overrides the output file, REPEATS (default 10) the timed runs per model. Exits 1 if a correctness check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
ARGS=()
DRY=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1; ARGS+=(--dry-run) ;;
        -*) echo "gpu_check.sh: unknown option $arg (use --dry-run, or give the official FDConv.py's path)" >&2; exit 2 ;;
        *) ARGS+=(--official "$arg") ;;
    esac
done
if [[ $DRY -eq 1 ]]; then
    OUT=${OUT:-$(mktemp -d)/cpu-dry-run.json}
else
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 1
    OUT=${OUT:-auto}
fi
timeout "${LIMIT:-470}" "$PYTHON" benchmarks/gpu_measure.py "${ARGS[@]}" --out "$OUT" --overwrite --budget "${BUDGET:-380}" --repeats "${REPEATS:-10}"
rc=$?
if [[ $rc -eq 124 ]]; then echo "gpu_check.sh: stopped at the ${LIMIT:-470} s limit; the file keeps the cells measured"; fi
exit $rc
