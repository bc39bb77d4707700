"""MegatronEngine: model chunks + DDP + optimizer + LR schedule, generic over the loss.

One engine serves every trainer of the project: the M-step trains it with the latent-aware CE,
the E-step RL and GRPO with the policy-gradient loss, and RL asks it for per-token log-probs.

    init_distributed(ParallelConfig(tp=2))
    engine = MegatronEngine.from_hf(hf_dir, EngineConfig(micro_batch_size=2, global_batch_size=8))
    result = engine.train_step(iter(microbatches), latent_ce_loss(latent_weight=1.0))
    logprobs = engine.forward_logprobs(batch)        # [B, s] on every rank
    save_checkpoint(engine, run_dir / "checkpoints", step=1, consumed_samples=8)

`train_step` reads `num_microbatches` micro-batches (each `micro_batch_size` rows of THIS data-
parallel rank) from the iterator; every rank of a tensor/pipeline group reads the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.megatron.batches import reduce_reports, split_rows
from ra3_megatron.megatron.forward_step import Batch, LossFactory, logprob_collector, make_forward_step
from ra3_megatron.megatron.optim import OptimConfig, build_optimizer, build_scheduler, current_lr, wrap_ddp


@dataclass(kw_only=True)
class EngineConfig:
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: int = 256
    bf16: bool | None = None  # None: bf16 on a GPU, fp32 on CPU
    transformer_impl: str = "auto"
    fp8: str | None = None  # None | "hybrid" | "e4m3": Transformer Engine on a GPU only (model.py refuses otherwise)
    fp8_recipe: str = "delayed"
    sequence_parallel: bool = False  # with TP > 1 on GPUs
    optim: OptimConfig = field(default_factory=OptimConfig)

    def use_bf16(self) -> bool:
        if self.bf16 is None:
            import torch

            return torch.cuda.is_available()
        return self.bf16


@dataclass
class StepResult:
    stats: dict[str, list[float]]  # name -> [sum, count] over the global batch
    grad_norm: float
    lr: float
    skipped: bool
    num_tokens: int

    def mean(self, name: str) -> float:
        total, count = self.stats.get(name, (0.0, 0.0))
        return total / count if count else float("nan")


def data_parallel_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_world_size()


def data_parallel_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank()


def build_chunks(hf_config, cfg: EngineConfig) -> list:
    """This rank's randomly initialised GPTModel chunks; load weights into them before the engine."""
    from ra3_megatron.megatron.model import ModelBuildConfig, build_model_chunks

    build = ModelBuildConfig(
        transformer_impl=cfg.transformer_impl,
        params_dtype="bfloat16" if cfg.use_bf16() else "float32",
        seq_length=cfg.seq_length,
        fp8=cfg.fp8,
        fp8_recipe=cfg.fp8_recipe,
        sequence_parallel=cfg.sequence_parallel,
        # Always initialise: with perform_initialization=False Megatron 0.16.1 never marks the
        # TP-split weights `tensor_model_parallel`, and the grad norm (clipping) under TP is wrong.
        perform_initialization=True,
    )
    return build_model_chunks(hf_config, build)


def _microbatch_multiple() -> int:
    """Interleaved (virtual) pipelines run micro-batches in groups of pp; others take any count."""
    from megatron.core import parallel_state as ps

    if ps.get_virtual_pipeline_model_parallel_world_size() is None:
        return 1
    return ps.get_pipeline_model_parallel_world_size()


class MegatronEngine:
    def __init__(self, cfg: EngineConfig, chunks: list, hf_config: Any = None):
        """chunks: this rank's unwrapped GPTModel chunks, weights already loaded (parallel_state initialised)."""
        import torch
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.transformer.module import Float16Module

        self.cfg = cfg
        self.hf_config = hf_config
        self.chunks = chunks  # unwrapped: state dicts and weight export use these
        dp = data_parallel_size()
        if cfg.global_batch_size % (cfg.micro_batch_size * dp):
            raise ConfigError(
                f"global_batch_size {cfg.global_batch_size} is not divisible by "
                f"micro_batch_size {cfg.micro_batch_size} x data-parallel size {dp}"
            )
        self.num_microbatches = cfg.global_batch_size // (cfg.micro_batch_size * dp)
        self._mb_multiple = _microbatch_multiple()
        if self.num_microbatches % self._mb_multiple:
            raise ConfigError(
                f"the interleaved pipeline (vpp) needs the micro-batches per step ({self.num_microbatches} = "
                f"global_batch_size / (micro_batch_size x dp)) to be a multiple of pp={self._mb_multiple}"
            )
        cfg.optim.bf16 = cfg.use_bf16()
        modules = [Float16Module(c.config, c) for c in chunks] if cfg.optim.bf16 else list(chunks)
        self.model = wrap_ddp(modules, cfg.optim)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, global_batch_size=cfg.global_batch_size)
        config = self.model[0].config
        if not torch.cuda.is_available():
            # gloo matches point-to-point messages per peer in posting order. Batched p2p ops post
            # "send to prev" and "send to next" on one group; with pp=2 both go to the same peer
            # and the interleaved (vpp) schedule then receives a gradient as an activation.
            # Unbatched ops put the two directions on two groups.
            config.batch_p2p_comm = False
        no_sync = [m.no_sync for m in self.model]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        config.finalize_model_grads_func = finalize_model_grads
        self._forward_backward = get_forward_backward_func()

    @classmethod
    def from_hf(cls, hf_dir: str | Path, cfg: EngineConfig) -> MegatronEngine:
        """Engine over an HF checkpoint dir (config + safetensors)."""
        from transformers import AutoConfig

        from ra3_megatron.megatron.model import load_hf_weights_into

        hf_config = AutoConfig.from_pretrained(hf_dir)
        chunks = build_chunks(hf_config, cfg)
        load_hf_weights_into(chunks, hf_dir)  # before DDP / optimizer copy the weights
        return cls(cfg, chunks, hf_config)

    # ---- the schedule ---------------------------------------------------------------------

    def _schedule(self, microbatches: list[Batch], loss_factory: LossFactory, *, forward_only: bool) -> list:
        """get_forward_backward_func over the micro-batches; the loss reports of the last stage."""
        import torch

        # Interleaved pipelines call forward_step once per chunk and micro-batch: one iterator each.
        its = iter(microbatches) if len(self.model) == 1 else [iter(microbatches) for _ in self.model]
        for m in self.model:
            m.train(not forward_only)
        with torch.no_grad() if forward_only else torch.enable_grad():
            reports = self._forward_backward(
                forward_step_func=make_forward_step(loss_factory),
                data_iterator=its,
                model=self.model,
                num_microbatches=len(microbatches),
                seq_length=int(microbatches[0]["tokens"].shape[1]),
                micro_batch_size=int(microbatches[0]["tokens"].shape[0]),
                forward_only=forward_only,
            )
        for m in self.model:
            m.train()
        return reports

    def train_step(self, data_iterator: Iterator[Batch], loss_factory: LossFactory) -> StepResult:
        """One optimizer step over `num_microbatches` micro-batches; stats agree on every rank."""
        microbatches = [next(data_iterator) for _ in range(self.num_microbatches)]
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._schedule(microbatches, loss_factory, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        lr = current_lr(self.optimizer)
        if ok:
            self.scheduler.step(increment=self.cfg.global_batch_size)
        stats = reduce_reports(reports)
        ntok = stats.get("lm loss", stats.get("pg loss", [0.0, 0.0]))[1]
        gn = float(grad_norm) if grad_norm is not None else float("nan")
        return StepResult(stats=stats, grad_norm=gn, lr=lr, skipped=not ok, num_tokens=int(ntok))

    def evaluate(self, data_iterator: Iterator[Batch], loss_factory: LossFactory, num_microbatches: int) -> dict:
        """Forward-only pass over `num_microbatches` micro-batches; reduced stats like train_step."""
        microbatches = [next(data_iterator) for _ in range(num_microbatches)]
        return reduce_reports(self._schedule(microbatches, loss_factory, forward_only=True))

    def forward_logprobs(self, batch: Batch) -> Any:
        """log pi(labels[i]) for every position, [B, s] float32, identical on every rank.

        batch: this DP rank's rows (tokens, labels, position_ids, optionally attention_mask);
        B need not be a multiple of micro_batch_size (the tail is padded and dropped).
        """
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        rows, seq = int(batch["tokens"].shape[0]), int(batch["tokens"].shape[1])
        micro = split_rows(batch, self.cfg.micro_batch_size, multiple=self._mb_multiple,
                           keys=("tokens", "labels", "position_ids", "attention_mask"))
        out = self._schedule(micro, logprob_collector, forward_only=True)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            result = torch.cat([o["logprobs"] for o in out])[:rows].to(device)
        else:
            result = torch.empty(rows, seq, dtype=torch.float32, device=device)
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(
                result, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
            )
        return result

    # ---- export ---------------------------------------------------------------------------

    def lr(self) -> float:
        return current_lr(self.optimizer)

    def save_hf(self, out_dir: str | Path, *, tokenizer_dir: str | Path | None = None) -> None:
        """Write an HF checkpoint (safetensors + config [+ tokenizer]) of the current weights."""
        from ra3_megatron.megatron.model import save_hf

        save_hf(self.chunks, self.hf_config, tokenizer_dir, out_dir)
