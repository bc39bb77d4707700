"""GPU recipes at real scale: the paper's three models on one 8-GPU H100 node.

`model` is a local HF checkpoint dir (nothing is downloaded); `input` is your corpus of Python
snippets in any form `ra3 prepare` reads. The paper mid-trains on 3.5M snippets (~1B tokens).
Each recipe runs as one torchrun job of 8 ranks (`recipes/ra3_llama8b.sh`, or `torchrun
--nproc-per-node 8 -m ra3_megatron.cli.main demo --recipe NAME`): every rank holds two vLLM engines
(pi scores, q samples) and its shard of q's Megatron trainer (TP = `rl.tp`, DP = the rest, Adam
sharded over DP); q's RL steps and each M-step (Transformer Engine, bf16; FP8 on the 8B recipe)
run over all 8 GPUs, the engines asleep meanwhile. `ra3 plan --recipe NAME` shows the memory.
"""

from __future__ import annotations

from ra3_megatron.em.loop import EMConfig
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.megatron.trainer import MStepConfig
from ra3_megatron.recipes.registry import RA3Recipe
from ra3_megatron.rl.layout import RLLayout
from ra3_megatron.rollout.settings import EngineSettings


def _gpu_recipe(*, model: str, input: str, run_dir: str, tp: int, pp: int, mbs: int, gbs: int, seq: int,
                lr: float, steps: int, fp8: str | None, description: str, rl_tp: int = 1,
                engine_memory_fraction: float | None = None) -> RA3Recipe:
    estep = EStepConfig(penalty=0.05, samples=4, horizon=4, rl_steps=4, rl_snippets=64, lr=1e-6,
                        max_snippet_tokens=2048, batch_snippets=256, micro_batch=8, shard_size=5000)
    mstep = MStepConfig(tp=tp, pp=pp, micro_batch_size=mbs, global_batch_size=gbs, seq_length=seq, lr=lr,
                        min_lr=lr / 10, warmup_steps=100, steps=steps, bf16=True,
                        transformer_impl="transformer_engine", distributed_optimizer=True, save_interval=500,
                        log_interval=10, eval_interval=500, eval_batches=10, split="99,1,0",
                        # Current (per-tensor) scaling, as in Megatron-Bridge's H100 FP8 performance
                        # recipes (`bf16_with_fp8_current_scaling_mixed`): no amax history to keep in
                        # step across ranks.
                        fp8=fp8, fp8_recipe="tensorwise" if fp8 else "delayed", sequence_parallel=tp > 1)
    em = EMConfig(model=model, input=input, run_dir=run_dir, iterations=2, mstep=mstep, estep=estep)
    return RA3Recipe(em=em, engines=EngineSettings(backend="vllm", memory_fraction=engine_memory_fraction),
                     rl=RLLayout(trainer="megatron", tp=rl_tp), ranks=8, description=description)


def llama32_1b_8gpu_h100_bf16(*, model: str = "checkpoints/Llama-3.2-1B", input: str = "data/python_snippets",
                              run_dir: str = "runs/llama32_1b") -> RA3Recipe:
    """Llama-3.2-1B, 8x H100, BF16, DP=8."""
    return _gpu_recipe(model=model, input=input, run_dir=run_dir, tp=1, pp=1, mbs=4, gbs=256, seq=4096,
                       lr=2e-5, steps=1000, fp8=None, description=llama32_1b_8gpu_h100_bf16.__doc__)


def qwen25_1p5b_8gpu_h100_bf16(*, model: str = "checkpoints/Qwen2.5-1.5B", input: str = "data/python_snippets",
                               run_dir: str = "runs/qwen25_1p5b") -> RA3Recipe:
    """Qwen2.5-1.5B, 8x H100, BF16, DP=8."""
    return _gpu_recipe(model=model, input=input, run_dir=run_dir, tp=1, pp=1, mbs=4, gbs=256, seq=4096,
                       lr=2e-5, steps=1000, fp8=None, description=qwen25_1p5b_8gpu_h100_bf16.__doc__)


def llama31_8b_8gpu_h100_fp8(*, model: str = "checkpoints/Llama-3.1-8B", input: str = "data/python_snippets",
                             run_dir: str = "runs/llama31_8b") -> RA3Recipe:
    """Llama-3.1-8B, 8x H100, FP8 (TE hybrid, current scaling), TP=2 x DP=4 with sequence parallelism."""
    return _gpu_recipe(model=model, input=input, run_dir=run_dir, tp=2, pp=1, mbs=1, gbs=256, seq=4096,
                       lr=1e-5, steps=1000, fp8="hybrid", description=llama31_8b_8gpu_h100_fp8.__doc__,
                       # q's trainer at TP=4 (Adam over DP=2) leaves 55 GiB beside it: two 15 GiB bf16
                       # engines at 30% of the GPU each, ~9 GiB of KV cache apiece (`ra3 plan`).
                       rl_tp=4, engine_memory_fraction=0.3)
