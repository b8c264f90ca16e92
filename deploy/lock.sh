#!/usr/bin/env bash
# Regenerate deploy/requirements.lock: every package the image installs on top of its Ray base, pinned with ==.
#
# Run from the repository root on Linux x86_64 with Python 3.11 (the image's platform; markers resolve for the
# machine that runs this). pip resolves from PyPI's metadata only (--dry-run): nothing is installed or built into
# the environment. Bump a top-level pin below, run this, review the diff, rebuild the image.
set -euo pipefail
cd "$(dirname "$0")/.."

RAY=2.60.0            # must match the tag of the FROM line in deploy/Dockerfile
TORCH=2.13.0          # the PyPI wheel carries its CUDA 13 runtime as nvidia-* wheels
TORCHVISION=0.28.0    # torch 2.13's: nvjpeg decoding of JPEGs on the GPU (vitpose_batch/pipeline/nvjpeg.py)
ORT_GPU=1.31.1        # CUDA 13 / cuDNN 9 build, the same CUDA major as torch's

report=$(mktemp)
trap 'rm -f "$report"' EXIT
# --isolated: ignore local pip configuration (find-links, extra indexes) so the lock reflects PyPI alone.
pip --isolated install --dry-run --ignore-installed --quiet --report "$report" \
    ".[hf]" "onnxruntime-gpu[cuda,cudnn]==${ORT_GPU}" "torch==${TORCH}" "torchvision==${TORCHVISION}" "ray[data]==${RAY}"

python3 - "$report" > deploy/requirements.lock <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in report["install"])
print("# Constraints for deploy/Dockerfile (pip install -c deploy/requirements.lock ...), made by deploy/lock.sh.")
print("# Linux x86_64, CPython 3.11. Do not edit by hand: change the pins in deploy/lock.sh and re-run it.")
for name, version in sorted(pins, key=lambda p: p[0].lower()):
    if name != "vitpose-batch":
        print(f"{name}=={version}")
PY
echo "wrote deploy/requirements.lock ($(grep -c '==' deploy/requirements.lock) pins)"
