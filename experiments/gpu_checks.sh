#!/usr/bin/env bash
# The GPU checks of this project, in one run on a machine with a CUDA GPU (docs/gpu.md holds the results).
#
#   bash experiments/gpu_checks.sh OUT_DIR [DATA_DIR]
#
# 1. experiments/bench_step_cost.py --device cuda: the step cost of every method (SGD and AdamW bases)
#    against a plain step and against the cost bound, with peak memory (JSON in OUT_DIR).
# 2. rthpo compare configs/compare_cifar10_resnet18.yaml at a small budget: ResNet-18 on CIFAR-10 with
#    four trials sharing the GPU (resources.gpu 0.25), while `nvidia-smi dmon` samples the GPU's
#    utilisation every second (OUT_DIR/gpu_util.txt); summary.md and trials.csv copied to OUT_DIR.
# DATA_DIR holds cifar10_{train,test}_jpg.tar.gz (a slice is fine); default ../shared/data/cifar10-jpeg.
set -uo pipefail
OUT=${1:?give the output folder}
DATA=${2:-../shared/data/cifar10-jpeg}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'ray', ray.__version__)" | tee "$OUT/versions.txt"

timeout 240 $PY experiments/bench_step_cost.py --device cuda --json "$OUT/bench_step_cost_cuda.json" 2>&1 | tee "$OUT/bench.log"

nvidia-smi dmon -s um -d 1 > "$OUT/gpu_util.txt" 2>&1 &
DMON=$!
timeout 270 $PY -m ray_rthpo.cli compare configs/compare_cifar10_resnet18.yaml --output /tmp/gpu_compare \
    --set data.data_dir="$DATA" --set budget_s=25 --set train.epochs=2 --set max_concurrent=4 \
    --set resources.gpu=0.25 \
    --num-cpus "$(nproc)" 2>&1 | tee "$OUT/compare.log"
kill "$DMON" 2>/dev/null
cp /tmp/gpu_compare/summary.md /tmp/gpu_compare/trials.csv /tmp/gpu_compare/*.png "$OUT/" 2>/dev/null
exit 0
