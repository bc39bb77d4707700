"""Megatron DDP, optimizer (Adam/AdamW via `get_megatron_optimizer`) and the LR schedule.

Only Megatron's optimizer works with Megatron DDP: gradients land in `param.main_grad`, which a
plain torch optimizer would silently ignore. The schedule is Megatron's OptimizerParamScheduler
(linear warmup, cosine decay to min_lr), stepped in SAMPLES so that resuming and changing the
global batch size keep the curve.

    chunks = wrap_ddp(chunks, cfg)
    optimizer = build_optimizer(chunks, cfg)
    scheduler = build_scheduler(optimizer, cfg)
"""

from __future__ import annotations

from dataclasses import dataclass

from ra3_megatron.errors import ConfigError


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    decay_steps: int = 100  # cosine decay length in optimizer steps (the run's total steps)
    lr_decay_style: str = "cosine"  # constant | linear | cosine | inverse-square-root
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # max global grad norm; 0 disables clipping
    use_distributed_optimizer: bool = False  # ZeRO-1: optimizer state sharded over data parallel
    bf16: bool = False  # bf16 params with fp32 main params and grads (GPU)

    def validate(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ConfigError(f"warmup_steps must be >= 0 and decay_steps >= 1, got {self.warmup_steps}, {self.decay_steps}")
        if self.lr_decay_style not in ("constant", "linear", "cosine", "inverse-square-root"):
            raise ConfigError(f"unknown lr_decay_style {self.lr_decay_style!r}")


def wrap_ddp(chunks: list, cfg: OptimConfig) -> list:
    """Wrap each model chunk in Megatron DDP with a persistent fp32 gradient buffer."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        # Per-token loss: DDP must SUM gradients (the schedule divides by the global token count).
        chunk.config.calculate_per_token_loss = True
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config,
                ddp_config=ddp_config,
                module=chunk,
                # Megatron-LM's rule: only the first chunk gets buckets of its own size.
                disable_bucketing=i > 0,
            )
        )
    return wrapped


def build_optimizer(chunks: list, cfg: OptimConfig):
    """Megatron's Adam (decoupled weight decay = AdamW) over DDP-wrapped chunks."""
    import torch
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg.validate()
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=cfg.bf16,
        params_dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
        decoupled_weight_decay=True,
    )
    return get_megatron_optimizer(opt_config, chunks)


def build_scheduler(optimizer, cfg: OptimConfig, *, global_batch_size: int):
    """Warmup + decay, counted in samples (Megatron-LM's convention: step(increment=GBS))."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup = cfg.warmup_steps * global_batch_size
    decay = max(cfg.decay_steps * global_batch_size, warmup + 1)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if cfg.warmup_steps else cfg.lr,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
        # Resume takes the schedule from the checkpoint, not from a possibly edited config.
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
