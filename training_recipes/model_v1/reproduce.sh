#!/usr/bin/env bash
# Reproduce model v1 from scratch (no parent model), on the CPU:
#     bash training_recipes/model_v1/reproduce.sh
# Needs `pip install -e ".[train]"` and the shared development data (../shared/data beside the
# repository). Writes runs/mlvirnet_v1/model.pt.
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PYTHON:-python}" -m MLVIRNETLib.cli train --config training_recipes/model_v1/config.yaml --threads 1
