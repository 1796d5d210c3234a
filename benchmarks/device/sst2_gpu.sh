#!/bin/bash
# pkd device checks: SST-2 benchmarks of issues 17/18 and the CUDA mixed-precision paths.
# Sizes come from the environment so a CPU smoke run can shrink them.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-540}            # seconds until everything still running is stopped
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 MPLBACKEND=Agg
. "$(dirname "$0")/gpu_site.sh"   # .gpu/ -> $S
export PYTHONPATH=$PWD/src:$PWD/benchmarks:$S
R=${RUNS:-/tmp/r}; rm -rf "$R"; mkdir -p "$R"
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el)s] $*" | tee -a "$R/timeline.txt"; }
(nvidia-smi -L; lscpu | grep -E "Model name|^CPU\(s\)"; $PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())") > "$R/env.txt" 2>&1
cat "$R/env.txt"
D=.gpu/SST-2
TRAIN=${TRAIN:-10000}; TEACHER_N=${TEACHER_N:-0}; EP=${EP:-2}; TEP=${TEP:-1}; SEEDS=${SEEDS:-1,2,3}
EXTRA=${EXTRA:-}
COMMON="--data-dir $D --train-samples $TRAIN --teacher-train-samples $TEACHER_N --epochs $EP --teacher-epochs $TEP --seeds $SEEDS --pooling mean --quiet $EXTRA"
log start
OMP_NUM_THREADS=4 $PY benchmarks/sst2_compare.py $COMMON --output $R/s17 --results $R/res/sst2_transfer \
  --transfer-rest --transfer-ratio 1 --betas 100,1000,10000 > $R/s17.log 2>&1 &
P1=$!
while [ ! -f $R/s17/teacher/metrics.json ] && kill -0 $P1 2>/dev/null; do sleep 2; done
log teacher done
TR=$R/s17/teacher
OMP_NUM_THREADS=3 $PY benchmarks/sst2_compare.py $COMMON --teacher-run $TR --output $R/base \
  --results $R/res/sst2_compare_gpu > $R/base.log 2>&1 &
P2=$!
PRE="--data-dir $D --teacher-run $TR --train-samples $TRAIN --epochs $EP --seeds $SEEDS --quiet ${PRE_EXTRA:-} $EXTRA"
OMP_NUM_THREADS=3 $PY benchmarks/sst2_pretrain.py $PRE --stages L3 --output $R/s18 --results $R/res/sst2_pretrain > $R/s18a.log 2>&1 &
P3=$!
OMP_NUM_THREADS=3 $PY benchmarks/sst2_pretrain.py $PRE --stages narrow --output $R/s18 --results $R/res/sst2_pretrain > $R/s18b.log 2>&1 &
P4=$!
# CUDA paths: the same short PKD-Skip distillation in fp32, bf16 and fp16 (accuracy, speed)
(for mp in no bf16 fp16; do
  OMP_NUM_THREADS=2 $PY -m pkd.cli distill --teacher $TR/model --task sst2 --data-dir $D \
    --method pkd --strategy skip --student-layers 3 --max-train-samples ${MP_N:-8000} --epochs 1 \
    --mixed-precision $mp --output $R/mp/$mp --quiet > $R/mp-$mp.log 2>&1
  echo "mixed precision $mp: rc=$? at $(el)s" >> $R/timeline.txt
done) &
P5=$!
wait_until() { local p=$1 d=$2; while kill -0 $p 2>/dev/null && [ $(el) -lt $d ]; do sleep 2; done; }
for p in $P1 $P2 $P3 $P4 $P5; do wait_until $p $BUDGET; done
log "P1 $(kill -0 $P1 2>/dev/null && echo running || echo done) P2 $(kill -0 $P2 2>/dev/null && echo running || echo done) P3 $(kill -0 $P3 2>/dev/null && echo running || echo done) P4 $(kill -0 $P4 2>/dev/null && echo running || echo done) P5 $(kill -0 $P5 2>/dev/null && echo running || echo done)"
pkill -P $P5 2>/dev/null  # the running distill of the mixed-precision loop, then the rest
for p in $P1 $P2 $P3 $P4 $P5; do kill $p 2>/dev/null; done
# the tables of issue 18 from the finished stages, (1) from the same-teacher base runs
if [ -f $R/base/results.json ] && [ -f $R/s18/task-L3/results.json ]; then
  timeout $(( BUDGET + 30 - $(el) > 5 ? BUDGET + 30 - $(el) : 5 )) $PY benchmarks/sst2_pretrain.py $PRE --stages L3,narrow \
    --baseline-from $R/base --output $R/s18 --results $R/res/sst2_pretrain > $R/s18final.log 2>&1
  log "final tables rc=$?"
fi
log end
cd $R && tar czf "$OUTDIR/results.tgz" --exclude='*.safetensors' --exclude='*.npy' --exclude='*.pt' \
  --exclude='*.bin' --exclude=checkpoints --exclude=tensorboard --exclude=corpus.txt \
  --exclude=transfer.tsv --exclude='*.onnx' --exclude='vocab.txt' --exclude='tokenizer.json' .
cp timeline.txt env.txt "$OUTDIR"/ 2>/dev/null
ls -la "$OUTDIR"
