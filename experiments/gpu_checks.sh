#!/usr/bin/env bash
# The GPU checks of this project, in one run on a machine with a CUDA GPU (docs/performance.md, "CUDA").
#
#   bash experiments/gpu_checks.sh OUT_DIR [DATA_DIR]
#   bash experiments/gpu_checks.sh --dry-run OUT_DIR     # the same steps on the CPU, at smoke size
#
# 1. experiments/bench_step_cost.py --device cuda: the step cost of every method (SGD and AdamW bases)
#    against a plain step and against the cost bound, with peak memory (JSON in OUT_DIR).
# 2. rthpo compare configs/compare_cifar10_resnet18.yaml at a small budget: ResNet-18 on CIFAR-10 with
#    four trials sharing the GPU (resources.gpu 0.25), while `nvidia-smi dmon` samples the GPU's
#    utilisation every second (OUT_DIR/gpu_util.txt); summary.md and trials.csv copied to OUT_DIR.
# 3. Data parallel (docs/distributed.md): `rthpo train configs/digits.yaml` under torchrun with one process
#    per GPU present (NCCL), beside one process on the same config; OUT_DIR/ddp_check.json holds each run's
#    epoch seconds and the largest difference of eta (relative; the step fails above 1e-3) and of the
#    validation loss between them (float32 and NCCL's reduction order: close, not bitwise). Skipped, with a
#    note, when fewer than 2 GPUs are present.
# DATA_DIR holds cifar10_{train,test}_jpg.tar.gz (a slice is fine); default ../shared/data/cifar10-jpeg.
#
# --dry-run checks the script before a GPU is spent on it: each step runs on the CPU at smoke size (the
# bench on the MLP, one repetition; the comparison on 64 FakeData images of 3x8x8, one epoch, a
# 0.5 compute-s budget, no GPU share; the data-parallel run on 2 gloo processes, one epoch) and nvidia-smi
# is not called. Its exit status is the first failing
# step's (the real run always exits 0, keeping what it measured). tests/test_documented_commands.py runs it.
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
OUT=${1:?give the output folder}
DATA=${2:-../shared/data/cifar10-jpeg}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
STATUS=0
note() {  # note() STATUS NAME: remember the first failing step (a dry run exits with its status)
    if [ "$1" -ne 0 ] && [ $STATUS -eq 0 ]; then
        STATUS=$1
        echo "gpu_checks: step '$2' failed (exit $1)" >&2
    fi
}

if [ $DRY -eq 1 ]; then
    echo "gpu_checks: dry run on the CPU at smoke size -> $OUT"
    DEVICE=cpu
    BENCH_SMOKE=(--models mlp --reps 1 --warmup 0 --threads 1)
    COMPARE_SMOKE=(--set data.name=fake --set data.fake_train_size=64 --set data.fake_test_size=32
                   --set "data.fake_shape=[3, 8, 8]"
                   --set data.batch_size=32 --set data.val_batch_size=32 --set budget_s=0.5 --set train.epochs=1
                   --set max_concurrent=1 --set resources.gpu=0 --set resources.cpu=1)
    GPU_SHARE=(--set resources.gpu=0)
    COMPARE_OUT="$OUT/compare"
    echo "dry run: nvidia-smi not called" > "$OUT/gpu.txt"
    VERSIONS="import torch, ray; print('torch', torch.__version__, 'cpu (dry run)', 'ray', ray.__version__)"
else
    DEVICE=cuda
    BENCH_SMOKE=()
    COMPARE_SMOKE=(--set budget_s=25 --set train.epochs=2 --set max_concurrent=4)
    GPU_SHARE=(--set resources.gpu=0.25)
    COMPARE_OUT=/tmp/gpu_compare
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
    VERSIONS="import torch, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'ray', ray.__version__)"
fi
$PY -c "$VERSIONS" | tee "$OUT/versions.txt"
note $? versions

timeout 240 $PY experiments/bench_step_cost.py --device "$DEVICE" "${BENCH_SMOKE[@]}" \
    --json "$OUT/bench_step_cost_$DEVICE.json" 2>&1 | tee "$OUT/bench.log"
note $? bench_step_cost

DMON=
if [ $DRY -eq 0 ]; then
    nvidia-smi dmon -s um -d 1 > "$OUT/gpu_util.txt" 2>&1 &
    DMON=$!
fi
timeout 270 $PY -m ray_rthpo.cli compare configs/compare_cifar10_resnet18.yaml --output "$COMPARE_OUT" \
    --set data.data_dir="$DATA" "${COMPARE_SMOKE[@]}" "${GPU_SHARE[@]}" \
    --num-cpus "$(nproc)" 2>&1 | tee "$OUT/compare.log"
note $? compare
if [ -n "$DMON" ]; then
    kill "$DMON" 2>/dev/null
fi
if [ "$COMPARE_OUT" != "$OUT/compare" ]; then
    cp "$COMPARE_OUT"/summary.md "$COMPARE_OUT"/trials.csv "$COMPARE_OUT"/*.png "$OUT/" 2>/dev/null
fi

if [ $DRY -eq 1 ]; then
    NPROC=2
    DDP_SET=(--set train.epochs=1 --set train.device=cpu)
else
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    DDP_SET=(--set train.epochs=3 --set train.device=cuda)
fi
if [ "$NPROC" -ge 2 ]; then
    timeout 240 $PY -m ray_rthpo.cli train configs/digits.yaml --output "$OUT/ddp_1" "${DDP_SET[@]}" \
        > "$OUT/ddp.log" 2>&1
    note $? ddp_one_process
    OMP_NUM_THREADS=1 timeout 300 $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
        -m ray_rthpo.cli train configs/digits.yaml --output "$OUT/ddp_$NPROC" "${DDP_SET[@]}" >> "$OUT/ddp.log" 2>&1
    note $? ddp_torchrun
    $PY - "$OUT/ddp_1/history.csv" "$OUT/ddp_$NPROC/history.csv" "$NPROC" "$OUT/ddp_check.json" <<'PYEOF' 2>&1 | tee -a "$OUT/ddp.log"
import json, sys
import pandas as pd
one, many = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
out = {"processes": int(sys.argv[3]), "epochs": len(one),
       "epoch_s_one_process": one["time/epoch_s"].round(4).tolist(),
       "epoch_s_data_parallel": many["time/epoch_s"].round(4).tolist(),
       "max_rel_lr_diff": float(((one["lr"] - many["lr"]).abs() / one["lr"].abs()).max()),
       "max_abs_val_loss_diff": float((one["val/loss"] - many["val/loss"]).abs().max())}
json.dump(out, open(sys.argv[4], "w"), indent=1)
print("ddp_check", json.dumps(out))
# ranks that adapt eta on their own shards drift apart by percents; one reduction order from another by ~1e-7
raise SystemExit(0 if len(one) == len(many) and out["max_rel_lr_diff"] <= 1e-3 else 1)
PYEOF
    note $? ddp_check
else
    echo "fewer than 2 GPUs ($NPROC): no data-parallel run" | tee "$OUT/ddp_check.txt"
fi
if [ $DRY -eq 1 ]; then
    exit $STATUS
fi
exit 0
