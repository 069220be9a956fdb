#!/usr/bin/env bash
# Issue 27 item 7 on this CPU: the new user's command, a 224 px `lana accelerate` of the ImageNet
# tf_efficientnet_lite0 on a synthetic 4,000-JPEG folder of 10 classes (its head does not fit, so the
# teacher is fine-tuned first), with each stage's time and the peak RSS. Run it alone, from a snapshot:
#   bench/folder_accelerate.sh [OUT] [EPOCHS]
# EPOCHS (default 0.5) sets the teacher's, the build's and the fine-tuning's epochs; on a 2-core CPU
# one Lite0 step at 224 px and batch 128 takes about 30 s, so 0.5 epochs is 13 steps per stage.
# Writes OUT/folder_accelerate.json (stages, build stages, peak RSS, CPU, load average).
set -euo pipefail
out=${1:-runs/folder-accelerate}
epochs=${2:-0.5}
folder=$out/folder-4000
mkdir -p "$out"
export HF_HUB_OFFLINE=1
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
[ -d "$folder/train" ] || python3 -m bench.make_folders "$folder" --images 4000 --classes 10 --size 256
/usr/bin/time -v -o "$out/time.txt" python3 -m lana accelerate --model tf_efficientnet_lite0 --pretrained \
    --dataset "$folder" --img-size 224 --space tiny --budget 0.6x --tables cpu-b1 \
    --teacher-epochs "$epochs" --build-epochs "$epochs" --finetune-epochs "$epochs" --out "$out/accelerate"
python3 - "$out" "$load_before" "$epochs" <<'EOF'
import json, re, sys
from pathlib import Path

from bench.provenance import cpu_model
from lana.library import Library

out, load_before, epochs = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
report = json.loads((out / "accelerate" / "report.json").read_text())
time_txt = (out / "time.txt").read_text()
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_txt).group(1))
wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", time_txt).group(1)
library = Library(report["library"])
result = {
    "command": "bench/folder_accelerate.sh " + " ".join(sys.argv[1:2]) + f" {epochs:g}",
    "cpu": cpu_model(),
    "load_before": load_before,
    "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    "epochs": epochs,
    "wall_clock": wall,
    "peak_rss_mb": round(rss_kb / 1024),
    "stages_s": {k: round(v, 1) for k, v in report["stages_s"].items()},
    "build_stages_s": {k: round(float(v), 1) for k, v in library.config.get("stages_s", {}).items()},
    "teacher": {k: report["teacher"][k] for k in ("top1", "latency_ms")},
    "student": {k: report["student"][k] for k in ("top1", "latency_ms")},
    "speedup": report["speedup"],
    "budget_ms": report["budget_ms"],
    "budget_measured_ms": report["budget_measured_ms"],
    "budget_met": report["budget_met"],
    "selection": report["selection"] if not isinstance(report["selection"], dict)
    else {k: v for k, v in report["selection"].items() if not isinstance(v, (list, dict))},
}
(out / "folder_accelerate.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
