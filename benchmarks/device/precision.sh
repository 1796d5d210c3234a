#!/bin/bash
# Issue 28: examples/s and MFU of pkd's PKD step (3-layer MiniLM student; 6 x 768 student of a
# 12 x 768 teacher) and of its teacher-cache forward, fp32 / bf16 / fp16, batch 32 x 64 and
# 256 x 128, on one GPU, alone on the machine. MiniLM-L6 from .gpu/ as sst2_gpu.sh restores it;
# the 12-layer teacher as a random model of all-mpnet-base-v2's shape (its 420 MB of weights
# do not fit the upload; speed does not depend on them). At most 5 min eager, 4 min compiled
# (256 x 128, fp32 and bf16: 8 compilations); results are written when a run ends.
set -u
T0=$(date +%s); OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"; PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
. "$(dirname "$0")/gpu_site.sh"   # .gpu/ -> $S
export PYTHONPATH=$PWD/src:$S
R=benchmarks/results
(nvidia-smi -L; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv) > "$OUTDIR/env.txt" 2>&1
# eager and unfused AdamW: every model, part, precision and shape
timeout ${EAGER_S:-300} $PY benchmarks/device/precision.py --random-weights \
  --variants eager,foreach --name cuda_precision_step 2> "$OUTDIR/eager.log"
echo "eager rc=$? at $(( $(date +%s)-T0 ))s" | tee -a "$OUTDIR/timeline.txt"
# torch.compile at the goal shape: each measurement compiles once (in its warm-up, ~20-40 s)
timeout ${COMPILE_S:-240} $PY benchmarks/device/precision.py --random-weights \
  --variants compile --shapes 256x128 --precisions fp32,bf16 --warmup 3 \
  --name cuda_precision_compile 2> "$OUTDIR/compile.log"
echo "compile rc=$? at $(( $(date +%s)-T0 ))s" | tee -a "$OUTDIR/timeline.txt"
for n in cuda_precision_step cuda_precision_compile; do
  mkdir -p "$OUTDIR/$n"; cp $R/$n/precision.* "$OUTDIR/$n/" 2>/dev/null
done
