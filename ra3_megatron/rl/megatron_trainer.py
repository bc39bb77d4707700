"""The E-step's RL trainer on Megatron-Core: the M-step's `MegatronEngine` with a second loss.

RL on q is not a second trainer: the same engine the M-step trains with the latent-aware CE is
stepped with `policy_gradient_loss_factory` (PPO clipped surrogate + optional k3 KL, from
`core.losses.policy_gradient_loss`), its log-probs come from `engine.forward_logprobs`, and the
new weights leave through `engine.save_hf` for the rollout engine.

One RL batch is split into optimizer steps of `rows_per_update` rows (the engine's global batch),
each cut into the engine's micro-batches (`_updates`: without a pipeline each is trimmed to its
own rows; rows without loss fill what a step lacks and add no loss and no tokens). Tree rows
(`rl.tree_rows`) are trained when the attention applies explicit masks (`supports_tree_rows`).
With `job_wide=True` the trainer spans every rank of the torchrun job at the given TP/PP (DP =
world / (TP x PP)): each data-parallel rank steps on its own rows (`rl.batch.data_parallel_rows`
cuts a batch every rank holds), the ranks agree on the number of optimizer steps, and Megatron
sums the gradients and the loss tokens over them, so the update equals one rank's on all rows.
Without it (the default) the trainer runs alone in a one-rank process group of its own, also when
its process is one worker of a torchrun job.

    trainer = MegatronPolicyTrainer.from_hf(model_dir, lr=1e-5, micro_batch=4, rows_per_update=16)
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError


@contextlib.contextmanager
def _own_process_group():
    """A one-rank process group even when the E-step runs as one worker of a torchrun job: worker
    0 trains q alone, so it must not wait for the other workers in init_process_group."""
    import torch.distributed as dist

    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MegatronPolicyTrainer:
    def __init__(self, engine, *, clip_eps: float = 0.2, kl_coef: float = 0.0, tokenizer_dir: str | Path | None = None):
        self.engine = engine
        self.clip_eps, self.kl_coef = clip_eps, kl_coef
        self.tokenizer_dir = tokenizer_dir
        from megatron.core import parallel_state as ps

        self.rows_per_update = engine.cfg.global_batch_size  # over all data-parallel ranks
        self.dp = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.local_rows = self.rows_per_update // self.dp  # this rank's rows per optimizer step
        self.steps = 0
        # Tree rows (rl.tree_rows) need an attention that applies the batch's mask and RoPE at
        # the batch's position ids: Megatron's local attention, not Transformer Engine's.
        from ra3_megatron.megatron.tree_attention import honours_attention_mask, use_position_ids_for_rope

        self.supports_tree_rows = honours_attention_mask(engine.chunks)
        if self.supports_tree_rows:
            use_position_ids_for_rope(engine.chunks)

    @classmethod
    def from_hf(
        cls,
        model_dir: str | Path,
        *,
        lr: float = 1e-5,
        clip_eps: float = 0.2,
        kl_coef: float = 0.0,
        micro_batch: int = 4,
        rows_per_update: int = 16,
        seq_length: int = 2048,
        tp: int = 1,
        pp: int = 1,
        seed: int = 1234,
        job_wide: bool = False,
    ) -> MegatronPolicyTrainer:
        import torch.distributed as dist

        from ra3_megatron.megatron.engine import EngineConfig, MegatronEngine
        from ra3_megatron.megatron.optim import OptimConfig
        from ra3_megatron.megatron.parallel import ParallelConfig, init_distributed

        if rows_per_update % micro_batch:
            raise ConfigError(f"rows_per_update {rows_per_update} must be a multiple of micro_batch {micro_batch}")
        owns_group = not dist.is_initialized()
        with contextlib.nullcontext() if job_wide else _own_process_group():
            init_distributed(ParallelConfig(tp=tp, pp=pp, seed=seed))
        # Over a job, Adam's state (fp32 main weights and two moments: 12 bytes a parameter) is
        # sharded over the data-parallel ranks (ZeRO-1), which is what lets an 8B q train on 80 GB GPUs.
        optim = OptimConfig(lr=lr, min_lr=lr, lr_decay_style="constant", weight_decay=0.0, clip_grad=1.0,
                            use_distributed_optimizer=job_wide)
        engine = MegatronEngine.from_hf(
            model_dir,
            EngineConfig(micro_batch_size=micro_batch, global_batch_size=rows_per_update, seq_length=seq_length,
                         optim=optim),
        )
        trainer = cls(engine, clip_eps=clip_eps, kl_coef=kl_coef, tokenizer_dir=model_dir)
        trainer._owns_group = owns_group
        return trainer

    def close(self) -> None:
        """Free the engine; tear down the process group when this trainer created it (the next
        phase of an in-process EM round builds its own)."""
        from ra3_megatron.megatron.parallel import destroy_distributed

        self.engine = None
        if getattr(self, "_owns_group", False):
            destroy_distributed()
            self._owns_group = False

    def _pipelined(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.get_pipeline_model_parallel_world_size() > 1

    def logprobs(self, batch: dict[str, Any]):
        """Per slice of rows, each cut after its last loss position (no padding work). Without a
        pipeline a slice is one micro-batch; a pipeline needs equal shapes within its update."""
        import torch

        from ra3_megatron.rl.batch import trim

        out = torch.zeros(batch["loss_mask"].shape, dtype=torch.float32)
        rows = int(out.shape[0])
        size = self.local_rows if self._pipelined() else self.engine.cfg.micro_batch_size
        for start in range(0, rows, size):
            part = trim({k: v[start : start + size] for k, v in batch.items() if torch.is_tensor(v)})
            lp = self.engine.forward_logprobs(part).float().cpu()
            out[start : start + lp.shape[0], : lp.shape[1]] = lp
        return out

    def _agreed_updates(self, rows: int) -> int:
        """Optimizer steps for this rank's `rows`: the most any data-parallel rank needs (each step
        is a collective; a rank with fewer rows steps on rows without loss)."""
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        count = -(-rows // self.local_rows)
        if self.dp > 1:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            t = torch.tensor([count], dtype=torch.long, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
            count = int(t.item())
        return count

    def _updates(self, batch: dict[str, Any], count: int):
        """`count` optimizer steps of this rank's rows, `local_rows` each, as micro-batches.
        Without a pipeline each micro-batch holds a share of the step's rows and is cut after its
        own last loss position (rows arrive sorted by length, so there is little padding), and a
        step with fewer rows than micro-batches gets one-row, 16-token micro-batches without loss;
        a pipeline needs one shape throughout, so there a short step is filled with rows of
        zeros whose loss mask is zero."""
        import torch

        from ra3_megatron.rl.batch import trim

        keys = [k for k, v in batch.items() if torch.is_tensor(v)]
        n, mbs = self.local_rows, self.engine.cfg.micro_batch_size
        pipelined = self._pipelined()
        for u in range(count):
            part = {k: batch[k][u * n : (u + 1) * n] for k in keys}
            if not pipelined:
                yield [self._micro(part, chunk) for chunk in _shares(int(part["tokens"].shape[0]), n // mbs)]
                continue
            pad = n - int(part["tokens"].shape[0])
            if pad:
                part = {k: torch.cat([v, v.new_zeros((pad, *v.shape[1:]))]) for k, v in part.items()}
            part = trim(part) if part["loss_mask"].any() else part
            yield [{k: v[i : i + mbs].contiguous() for k, v in part.items()} for i in range(0, n, mbs)]

    @staticmethod
    def _micro(part: dict[str, Any], rows: range) -> dict[str, Any]:
        from ra3_megatron.rl.batch import trim

        if len(rows):
            return trim({k: v[rows.start : rows.stop] for k, v in part.items()})
        # No rows here: one row of 16 zero tokens without loss ([1, 16], or [1, 1, 16, 16] for
        # an attention mask); the batch this rank holds may have no rows at all.
        return {k: v.new_zeros((1, 16)) if v.dim() == 2 else v.new_zeros((1, *v.shape[1:-2], 16, 16))
                for k, v in part.items()}

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        from ra3_megatron.megatron.forward_step import policy_gradient_loss_factory

        loss = policy_gradient_loss_factory(clip_eps=self.clip_eps, kl_coef=self.kl_coef)
        sums: dict[str, list[float]] = {}
        grad_norms = []
        for micro in self._updates(batch, self._agreed_updates(int(batch["tokens"].shape[0]))):
            result = self.engine.train_step(iter(micro), loss)
            grad_norms.append(result.grad_norm)
            for k, (s, c) in result.stats.items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
        self.steps += 1
        metrics = {k.replace(" ", "_"): (s / c if c else float("nan")) for k, (s, c) in sums.items()}
        pg = sums.get("pg loss", [0.0, 0.0])
        metrics["loss"] = pg[0] / pg[1] if pg[1] else 0.0
        metrics["tokens"] = int(pg[1])
        metrics["grad_norm"] = max(grad_norms) if grad_norms else 0.0
        metrics["optimizer_steps"] = len(grad_norms)
        return metrics

    def save_state(self, out_dir: str | Path) -> None:
        """Collective: the engine's Megatron checkpoint (weights, optimizer shards with their Adam
        moments, LR schedule, RNG) under `out_dir`, what a resumed run needs beside the HF export."""
        from ra3_megatron.megatron.checkpoint import save_checkpoint

        save_checkpoint(self.engine, out_dir, step=self.steps, consumed_samples=0)

    def load_state(self, state_dir: str | Path) -> None:
        from ra3_megatron.errors import InputError
        from ra3_megatron.megatron.checkpoint import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(state_dir)
        if ckpt is None:
            raise InputError(state_dir, "no complete trainer checkpoint to resume from")
        self.steps = int(load_checkpoint(self.engine, ckpt)["step"])

    def export_weights(self, out_dir: str | Path) -> None:
        self.engine.save_hf(out_dir, tokenizer_dir=self.tokenizer_dir)

    def named_weights(self):
        """Collective (every rank of the model's groups iterates it to the end): (HF name, full
        tensor), the TP shards all-gathered and the PP stages broadcast (`export_hf_state_dict`)."""
        from ra3_megatron.megatron.convert_weights import export_hf_state_dict

        return export_hf_state_dict(self.engine.chunks)


def _shares(rows: int, parts: int) -> list[range]:
    """`rows` consecutive rows cut into `parts` near-equal ranges (empty ones when rows < parts)."""
    base, extra = divmod(rows, parts)
    out, at = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(range(at, at + size))
        at += size
    return out
