#!/usr/bin/env bash
# Issue 27 item 7, for a lent GPU: a 224 px streamed build and accelerate on a synthetic JPEG folder,
# with images/s and peak memory. One command, a few minutes on one GPU:
#   bash bench/gpu_folder.sh [OUT] [IMAGES]
# Needs lana importable (pip install -e . or PYTHONPATH with lana/candidates, lana/solver linked).
set -euo pipefail
out=${1:-runs/gpu-folder}
images=${2:-5000}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
folder="$out/scale/folder-$images"  # where bench/stream_scale.py looks for it
[ -d "$folder/train" ] || python3 -m bench.make_folders "$folder" --images "$images" --classes 10 --size 256 --workers 8
# the stream-scale measurement (peak RSS, distillation images/s) on the GPU
python3 -m bench.stream_scale --sizes "$images" --steps 200 --batch-size 128 --model tf_efficientnet_lite0 \
    --space compact --score-images 1000 --device cuda --out "$out/scale" 2>&1 | tail -3
# the whole path: the pretrained head fine-tuned for the folder's classes, build, plan, fine-tune, measure
python3 -m lana accelerate --model tf_efficientnet_lite0 --pretrained --dataset "$folder" --img-size 224 \
    --space compact --build-epochs 1 --teacher-epochs 1 --finetune-epochs 1 --budget 0.6x --tables cuda-b64 \
    --device cuda --no-export --out "$out/accelerate" 2>&1 | grep -v "it/s\|s/it" | tail -8
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
report = json.loads((out / "accelerate" / "report.json").read_text())
from lana.library import Library
lib = Library(report["library"])
stages = lib.config.get("stages_s", {})
print("accelerate stages (s):", {k: round(v, 1) for k, v in report["stages_s"].items()})
print("build stages (s):", {k: round(v, 1) for k, v in stages.items()})
print("scale:", (out / "scale" / "stream_scale.json").read_text()[:800])
EOF
