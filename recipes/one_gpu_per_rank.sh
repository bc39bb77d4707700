#!/usr/bin/env bash
# Run a command with only this torchrun rank's GPU visible (CUDA_VISIBLE_DEVICES from LOCAL_RANK).
#
#   torchrun --nproc-per-node 8 --no-python recipes/one_gpu_per_rank.sh python -m ra3_megatron.cli.main em ...
#
# Each rank's in-process vLLM engine takes cuda:0 of what it sees (vLLM's single-process executor);
# with one GPU visible per rank that is the rank's own GPU, and the trainer's too. NCCL still
# connects the ranks; on some systems it then moves data through shared memory instead of P2P.
set -euo pipefail
: "${LOCAL_RANK:?run me under torchrun (LOCAL_RANK is not set)}"
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -ra GPUS <<< "$CUDA_VISIBLE_DEVICES"
  export CUDA_VISIBLE_DEVICES="${GPUS[$LOCAL_RANK]:?LOCAL_RANK $LOCAL_RANK has no GPU in CUDA_VISIBLE_DEVICES}"
else
  export CUDA_VISIBLE_DEVICES="$LOCAL_RANK"
fi
exec "$@"
