#!/usr/bin/env bash
# Run timm's own model tests (pytorch-image-models tests/test_models.py) on every *_fdconv model.
#
#   .ci/timm_test_models.sh PATH/TO/pytorch-image-models [extra pytest args]
#
# Needs a checkout of pytorch-image-models (not vendored here) and is not part of .ci/run: CI has no network,
# and the suite takes hours on two CPU cores. The tests run in a scratch folder whose conftest.py imports
# fdconv_zoo, as timm's CI imports timm, so timm's list_models() parametrisation includes the FDConv models;
# `-k _fdconv` keeps only those, `not pretrained` drops the tests that download every pretrained tag.
# Extra args go to pytest (e.g. `-n 8` with pytest-xdist). TorchScript tests fail by design (FDConv models are not scriptable; use torch.export or ONNX).
set -euo pipefail
if [[ $# -lt 1 || ! -f "$1/tests/test_models.py" ]]; then
    echo "usage: $0 PATH/TO/pytorch-image-models [pytest args]" >&2
    exit 2
fi
timm_repo=$(cd "$1" && pwd)
shift
python=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp "$timm_repo/tests/test_models.py" "$scratch/"
echo "import fdconv_zoo  # noqa: F401  (registers the *_fdconv models with timm)" > "$scratch/conftest.py"
cd "$scratch"
HF_HUB_OFFLINE=1 "$python" -m pytest -p no:cacheprovider -q -rfE -k "_fdconv and not pretrained" test_models.py "$@"
