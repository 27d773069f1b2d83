#!/usr/bin/env bash
# The memory plans at full size on one GPU, in one call (benchmarks/bench_memory.py): FLUX.1 dev/schnell, then SD3.5
# Large/Turbo, random bfloat16 weights in the published configs at 1024², every plan against diffusers' own single
# pipeline under the same offload call; after a smoke run of the tiny Qwen-Image pair (a LoRA-style pair) on the device.
# Each run has its own time limit and writes its JSON when done, so a cut-off later run keeps the earlier ones.
#   OUT=/tmp/gpu bash benchmarks/gpu_memory.sh        # results: $OUT/memory-*-gpu.json
set -u
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-memory}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)"
timeout "${TINY_S:-60}" "$PY" benchmarks/bench_memory.py --family qwenimage --size tiny --device cuda --repeats 5 \
  --out "$OUT/memory-qwenimage-tiny-gpu.json"
for family in flux sd3; do
  timeout "${FULL_S:-240}" "$PY" benchmarks/bench_memory.py --family "$family" --size full --device cuda \
    --base-steps "${BASE_STEPS:-8}" --repeats "${REPEATS:-3}" --images 2 --out "$OUT/memory-$family-gpu.json"
done
