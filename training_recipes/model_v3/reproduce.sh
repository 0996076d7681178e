#!/usr/bin/env bash
# Reproduce model v3 from model v2 (fetched from the lineage tag, sha256 checked), on the CPU:
#     bash training_recipes/model_v3/reproduce.sh
# Needs `pip install -e ".[train]"` and the shared development data (../shared/data beside the
# repository). Writes training_recipes/model_v3/parent.pt and runs/mlvirnet_v3/model.pt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../common/fetch_parent.sh" v2 "$here/parent.pt"
cd "$here/../.."
"${PYTHON:-python}" -m MLVIRNETLib.cli train --config training_recipes/model_v3/config.yaml --threads 2
