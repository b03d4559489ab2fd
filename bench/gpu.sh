#!/usr/bin/env bash
# The GPU benchmark run, as one command for a machine that has torch but not the rest of
# the stack (no mlflow, prefect or duckdb):
#   eager     the training-step comparison with diffusers at three shapes
#   compiled  the same, both U-Nets under torch.compile(mode="reduce-overhead") (CUDA graphs)
#   ttq       time to quality with the training cores on the GPU
#   eval      guided DDIM sampling against diffusers' scheduler (unet-xs, unet-s; 25 and 50
#             steps, guidance 4), FID feature extraction against torchmetrics (the Inception
#             with random weights: the FID weights do not fit what a run may carry), and the
#             FID-10K point and nightly grid projected from them
#
#   bash bench/gpu.sh OUT_DIR [WHEEL_DIR] [PARTS]     PARTS: comma list, default eager,compiled,ttq
#
# WHEEL_DIR holds wheels the machine lacks (diffusers, importlib_metadata, open_clip_torch,
# ftfy, wcwidth; pytorch-fid for eval); they are installed into a scratch folder, never into
# the system. Each benchmark has its own time limit, so one that hangs (a compile) cannot eat
# the others.
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR [WHEEL_DIR] [PARTS]}
wheels=${2:-}
parts=",${3:-eager,compiled,ttq},"
mkdir -p "$out"
if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/marble-site "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/marble-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 MARBLE_TRACKING=off
step() { timeout "$1" python3 bench/train_step.py "${@:2}" || echo "exit $? (timeout $1 s): $*"; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__)"
    if [[ $parts == *,eager,* ]]; then
        step 90 --batch 64 --latent 8 --steps 50
        step 90 --batch 256 --latent 16 --steps 50
        step 90 --batch 64 --latent 32 --steps 30 --presets unet-m,unet-l
    fi
    if [[ $parts == *,compiled,* ]]; then
        step 180 --batch 64 --latent 8 --steps 50 --compile reduce-overhead
        step 120 --batch 256 --latent 16 --steps 50 --compile reduce-overhead --presets unet-s,unet-l
    fi
    if [[ $parts == *,ttq,* ]]; then
        python3 bench/time_to_quality.py --minutes 0.5 --unet unet-xs --batch 128 --out "$out/ttq"
    fi
    if [[ $parts == *,eval,* ]]; then
        for unet in unet-xs unet-s; do
            timeout 240 python3 bench/sampling.py --unet "$unet" --batch 500 \
                > "$out/sampling_$unet.txt" || echo "exit $? (timeout 240 s): sampling $unet"
            cat "$out/sampling_$unet.txt"
        done
        # the projection samples at unet-s's guided DDIM-25 rate, the slower of the two
        rate=$(tail -n 1 "$out/sampling_unet-s.txt" | python3 -c \
            "import json, sys; print(json.load(sys.stdin)['rows'][0]['marble_img_s'])") || rate=45
        timeout 300 python3 bench/fid.py --random-weights --n 2000 --batch 250 \
            --sampling-img-s "$rate" || echo "exit $? (timeout 300 s): fid"
    fi
} 2>&1 | tee "$out/log.txt"  # no filter in between: a buffered pipe loses output on timeout
