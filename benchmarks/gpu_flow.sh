#!/usr/bin/env bash
# The transformer pairs at full size on one GPU, in one call: FLUX.1 dev/schnell and SD3.5 Large/Turbo with random
# bfloat16 weights at 1024² (benchmarks/bench_flow.py), after a smoke run of the tiny FLUX pair on the same device.
# Each family has its own time limit and writes its JSON as it goes, so a cut-off run keeps what it measured.
#   OUT=/tmp/gpu bash benchmarks/gpu_flow.sh        # results: $OUT/flow-*-h200.json
set -u
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-flow}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
timeout "${TINY_S:-60}" "$PY" benchmarks/bench_flow.py --family flux --size tiny --device cuda --repeats 5 --out "$OUT/flow-flux-tiny-h200.json"
for family in flux sd3; do
  timeout "${FULL_S:-230}" "$PY" benchmarks/bench_flow.py --family "$family" --size full --device cuda --base-steps 28 \
    --repeats "${REPEATS:-3}" --out "$OUT/flow-$family-h200.json"
done
