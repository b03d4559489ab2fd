#!/usr/bin/env bash
# The GPU benchmark run, as one command for a machine that has torch but not the rest of
# the stack (no mlflow, prefect or duckdb): the training-step comparison with diffusers at
# three shapes, then time to quality with the training cores on the GPU.
#
#   bash bench/gpu.sh OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR holds wheels the machine lacks (diffusers, importlib_metadata, open_clip_torch,
# ftfy, wcwidth); they are installed into a scratch folder, never into the system.
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
mkdir -p "$out"
if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/marble-site "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/marble-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 MARBLE_TRACKING=off
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__)"
    python3 bench/train_step.py --batch 64 --latent 8 --steps 50
    python3 bench/train_step.py --batch 256 --latent 16 --steps 50
    python3 bench/train_step.py --batch 64 --latent 32 --steps 30 --presets unet-m,unet-l
    python3 bench/time_to_quality.py --minutes 0.5 --unet unet-xs --batch 128 --out "$out/ttq"
} 2>&1 | tee "$out/log.txt"  # no filter in between: a buffered pipe loses output on timeout
