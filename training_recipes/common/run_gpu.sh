#!/usr/bin/env bash
# A training run on a lent GPU machine (issue #13), with the CUDA tests of #15 first:
#     CONFIG=training_recipes/model_v4/stage1.yaml LIMIT=565 bash training_recipes/common/run_gpu.sh
# Run from the repository root there, with .gpudata/ carried: the copies written by
# training_recipes/common/make_copies.py, and sitk.tar.xz, SimpleITK's unpacked wheel compressed with xz
# (the machine has no SimpleITK, nothing can be fetched there, and the wheel itself is 50 MB).
# gpu_train.py sizes CONFIG to the time left (CONFIG_sized.yaml beside it) and trains; everything
# ends within LIMIT seconds of the start. The logs, the sized config, the metrics and the model
# files go to $OUT (at most 8 files come back).
set -uo pipefail
export PYTHONUNBUFFERED=1
START=$(date +%s)
LIMIT=${LIMIT:-570}
CONFIG=${CONFIG:-training_recipes/model_v4/stage1.yaml}
OUT=${OUT:-out}
mkdir -p "$OUT" /tmp/site
[ -d /tmp/site/SimpleITK ] || tar xJf .gpudata/sitk.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, SimpleITK; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'SimpleITK', SimpleITK.Version_VersionString())"
timeout 100 python3 -m pytest Testing/registration/test_registration.py Testing/core/test_devices.py -q \
    -p no:cacheprovider -k "cuda or device or meta" 2>&1 | tee "$OUT/tests.log" | tail -4
left=$(( LIMIT - ($(date +%s) - START) ))
echo "training: $left s left"
if (( left < 180 )); then echo "too little time left to train" >&2; exit 1; fi
timeout $(( left - 10 )) python3 training_recipes/common/gpu_train.py --config "$CONFIG" \
    --seconds $(( left - 120 )) 2>&1 | tee "$OUT/train.log"
sized="${CONFIG%.yaml}_sized.yaml"
[ -f "$sized" ] || { echo "no sized config: the run did not start" >&2; exit 1; }
run=$(python3 -c "from MLVIRNETLib.training import load_config; print(load_config('$sized').output_dir)")
cp "$sized" "$run/metrics.csv" "$OUT/" 2>/dev/null
for f in model.pt stages/stage0.pt stages/stage1.pt; do [ -f "$run/$f" ] && cp "$run/$f" "$OUT/$(basename "$f")"; done
[ -f "$run/model.pt" ] || cp "$run/checkpoints/last.pt" "$OUT/" 2>/dev/null
ls -la "$OUT"
echo "total $(( $(date +%s) - START )) s"
