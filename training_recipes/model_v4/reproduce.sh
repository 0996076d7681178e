#!/usr/bin/env bash
# Reproduce model v4 (shipped until model v5, models-lineage-v1-v5:Resources/Models/v4/) from model v3: the data copies, then both stages.
#     bash training_recipes/model_v4/reproduce.sh [SHARED_DATA]   (default: ../shared/data beside the repository)
# Needs `pip install -e ".[train]"`. Made on a GPU (stage 1: 386 s, stage 2: 180 s on an H100 with
# 14 data workers); on a 2-core CPU it would take about 14 hours. GPU training is not
# deterministic, so the result is another model of the same recipe, not the same bytes.
# Model v3, which it starts from, is fetched from the git tag models-lineage-v1-v5 into
# training_recipes/model_v4/parent.pt (sha256 checked, common/fetch_parent.sh).
# Writes .gpudata/ (copies), runs/mlvirnet_v4_gpu/ (stage 1) and runs/mlvirnet_v4_gpu2/model.pt
# (the model); the shipped file is not touched. `mlvirnet train` refuses an output folder that
# already holds a run: move runs/mlvirnet_v4_gpu*/ away before running this again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../common/fetch_parent.sh" v3 "$here/parent.pt"
bash "$here/../common/train_on_copies.sh" "${1:-}" training_recipes/model_v4/stage1.yaml training_recipes/model_v4/stage2.yaml
echo "model: runs/mlvirnet_v4_gpu2/model.pt (shipped until model v5: models-lineage-v1-v5:Resources/Models/v4/mlvirnet_default.pt)"
