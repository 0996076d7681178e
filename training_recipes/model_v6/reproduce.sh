#!/usr/bin/env bash
# Reproduce the shipped model v6 from model v5: the data copies, then the training.
#     bash training_recipes/model_v6/reproduce.sh [SHARED_DATA]   (default: ../shared/data beside the repository)
# Needs `pip install -e ".[train]"`. Made on a GPU (349 s on an H100 with 14 data workers); on a
# 2-core CPU it would take about 12 hours. GPU training is not deterministic, so the result is
# another model of the same recipe, not the same bytes.
# Model v5, which it starts from, is fetched from the git tag models-lineage-v1-v5 into
# training_recipes/model_v6/parent.pt (sha256 checked, common/fetch_parent.sh).
# Writes .gpudata/ (copies) and runs/mlvirnet_v6_truth_gpu/model.pt (the model); the shipped file
# is not touched. `mlvirnet train` refuses an output folder that already holds a run: move
# runs/mlvirnet_v6_truth_gpu/ away before running this again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../common/fetch_parent.sh" v5 "$here/parent.pt"
bash "$here/../common/train_on_copies.sh" "${1:-}" training_recipes/model_v6/config.yaml
echo "model: runs/mlvirnet_v6_truth_gpu/model.pt (shipped: Resources/Models/mlvirnet_default.pt)"
