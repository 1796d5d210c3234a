#!/bin/bash
# The commands that wrote this folder (2026-12-02): one thread pinned to core 0 of the
# 2-core AMD EPYC; the other core ran other developers' work (pinned away from core 0).
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() { taskset -c 0 .venv/bin/python benchmarks/embed_compare.py "$@"; }
run --max-sentences 10000 --epochs 1 --heldout-pairs 1500 --tag minilm-L3 > /tmp/emb_L3.log 2>&1
run --max-sentences 10000 --epochs 1 --heldout-pairs 1500 --student-hidden-size 256 --tag minilm-L3x256 > /tmp/emb_L3x256.log 2>&1
M=$HOME/.cache/pkd/models/all-mpnet-base-v2
run --teacher $M --student-layers 6 --max-sentences 2000 --epochs 1 --heldout-pairs 1000 --max-length 64 --eval-texts 200 --tag mpnet-L6 > /tmp/emb_mpL6.log 2>&1
run --teacher $M --student-layers 3 --max-sentences 2000 --epochs 1 --heldout-pairs 1000 --max-length 64 --eval-texts 200 --tag mpnet-L3 > /tmp/emb_mpL3.log 2>&1
