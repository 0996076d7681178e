#!/usr/bin/env bash
# The data copies, then `mlvirnet train` with each CONFIG in turn (the reproduce.sh of the GPU recipes):
#     bash training_recipes/common/train_on_copies.sh SHARED_DATA CONFIG [CONFIG ...]
# SHARED_DATA may be empty: ../shared/data beside the repository. CONFIG paths are relative to the
# repository root. Writes .gpudata/ (training_recipes/common/make_copies.py) and each config's output_dir.
set -euo pipefail
DATA=$(realpath "${1:-$(dirname "$0")/../../../shared/data}")
shift
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
"$PY" training_recipes/common/make_copies.py --data "$DATA" --out .gpudata
for config in "$@"; do
    "$PY" -m MLVIRNETLib.cli train --config "$config"
done
