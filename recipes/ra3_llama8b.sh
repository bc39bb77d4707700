#!/usr/bin/env bash
# RA3 mid-training of Llama-3.1-8B on one 8x H100 node (FP8 through Transformer Engine, TP=2 x DP=4).
#
#   MODEL=/ckpt/Llama-3.1-8B DATA=/data/python_snippets bash recipes/ra3_llama8b.sh [key=value ...]
#
# The driver runs the EM loop: E-step sampling in vLLM, q's RL update in Megatron, and each
# M-step as `torchrun --nproc-per-node 8 -m ra3_megatron.cli.main mstep ...` (recipe
# llama31_8b_8gpu_h100_fp8, see ra3_megatron/recipes/gpu.py). Overrides are recipe fields:
#   em.estep.penalty=0.1 em.iterations=3 em.nproc=8 em.mstep_args+=steps=2000
# Needs the GPU stack: pip install -e ".[gpu]" (README, "Install on GPUs").
set -euo pipefail
: "${MODEL:?set MODEL to a local HF checkpoint dir of Llama-3.1-8B}"
: "${DATA:?set DATA to your Python corpus (anything ra3 prepare reads)}"
exec ra3 demo --recipe llama31_8b_8gpu_h100_fp8 --run-dir "${RUN_DIR:-runs/llama31_8b}" \
  --eval-problems "${EVAL_PROBLEMS:-164}" em.model="$MODEL" em.input="$DATA" "$@"
