#!/usr/bin/env bash
# Reproduce model v2 from model v1 (fetched from the lineage tag, sha256 checked), on the CPU:
#     bash training_recipes/model_v2/reproduce.sh
# Needs `pip install -e ".[train]"` and the shared development data (../shared/data beside the
# repository). Writes training_recipes/model_v2/parent.pt and runs/mlvirnet_v2_finest/model.pt.
# supervised.yaml and unsupervised.yaml beside it are the rejected candidates (same parent).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../common/fetch_parent.sh" v1 "$here/parent.pt"
cd "$here/../.."
"${PYTHON:-python}" -m MLVIRNETLib.cli train --config training_recipes/model_v2/config.yaml --threads 2
