#!/usr/bin/env bash
# RA3 mid-training of Llama-3.1-8B on one 8x H100 node (FP8 through Transformer Engine, TP=2 x DP=4).
#
#   MODEL=/ckpt/Llama-3.1-8B DATA=/data/python_snippets bash recipes/ra3_llama8b.sh [key=value ...]
#
# One torchrun job of 8 ranks runs the whole EM loop (recipe llama31_8b_8gpu_h100_fp8, see
# ra3_megatron/recipes/gpu.py): every rank holds pi's and q's vLLM engines and its shard of q's
# Megatron trainer (TP=2, Adam sharded over DP=4); RL rollouts run on every rank, q's weights reach
# the engines in memory, and each M-step runs in-process over the 8 ranks while the engines sleep.
# `ra3 plan --recipe llama31_8b_8gpu_h100_fp8` prints the memory per GPU of every phase.
# Overrides are recipe fields: em.estep.penalty=0.1 em.iterations=3 em.mstep.steps=2000 rl.tp=4
# Rerunning the same command resumes the run. Needs the GPU stack: pip install -e ".[gpu]" (README).
set -euo pipefail
: "${MODEL:?set MODEL to a local HF checkpoint dir of Llama-3.1-8B}"
: "${DATA:?set DATA to your Python corpus (anything ra3 prepare reads)}"
# Each rank sees only its own GPU (recipes/one_gpu_per_rank.sh): its in-process vLLM engines take
# cuda:0 of what they see.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec torchrun --standalone --nproc-per-node "${NPROC:-8}" --no-python "$HERE/one_gpu_per_rank.sh" \
  python -m ra3_megatron.cli.main demo \
  --recipe llama31_8b_8gpu_h100_fp8 --run-dir "${RUN_DIR:-runs/llama31_8b}" \
  --eval-problems "${EVAL_PROBLEMS:-164}" em.model="$MODEL" em.input="$DATA" "$@"
