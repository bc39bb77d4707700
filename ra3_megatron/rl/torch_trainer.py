"""A small torch/transformers `PolicyTrainer`: the E-step RL for CPU tests, the fake path and
single-process runs without Megatron. Same loss (`core.losses.policy_gradient_loss`) and the
same token-sum / global-count reduction as the Megatron trainer.

    trainer = TorchPolicyTrainer(model_dir, lr=1e-5)
    batch["old_logprobs"] = trainer.logprobs(batch)
    metrics = trainer.step(batch)
    trainer.export_weights(out_dir)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TorchPolicyTrainer:
    dp, dp_rank = 1, 0  # one process: it trains every row of a batch

    def __init__(
        self,
        model_dir: str | Path,
        *,
        lr: float = 1e-5,
        clip_eps: float = 0.2,
        kl_coef: float = 0.0,
        micro_batch: int = 16,
        max_grad_norm: float = 1.0,
        rows_per_update: int | None = None,
        seed: int = 0,
        threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model_dir = Path(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.clip_eps, self.kl_coef = clip_eps, kl_coef
        self.micro_batch, self.max_grad_norm = micro_batch, max_grad_norm
        self.rows_per_update = rows_per_update  # None: the whole RL batch is one optimizer step
        self.steps = 0

    def _token_logprobs(self, batch):
        """log q(label) on the loss positions, [b, s] (0 elsewhere). The head and log-softmax run
        only where the loss mask is set (a few tokens per example), not on every position."""
        import torch

        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        hidden = decoder(input_ids=batch["tokens"], position_ids=batch["position_ids"]).last_hidden_state
        sel = batch["loss_mask"] > 0
        logits = head(hidden[sel]).float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, batch["labels"][sel].unsqueeze(-1)).squeeze(-1)
        out = torch.zeros(sel.shape, dtype=torch.float32)
        return out.masked_scatter(sel, picked)

    def _slices(self, batch: dict[str, Any]):
        from ra3_megatron.rl.batch import trim

        b = batch["tokens"].shape[0]
        for i in range(0, b, self.micro_batch):
            yield trim({k: v[i : i + self.micro_batch] for k, v in batch.items() if hasattr(v, "shape")})

    def logprobs(self, batch: dict[str, Any]):
        import torch

        out = torch.zeros(batch["loss_mask"].shape, dtype=torch.float32)
        self.model.eval()
        with torch.no_grad():
            for i, mb in zip(range(0, out.shape[0], self.micro_batch), self._slices(batch)):
                lp = self._token_logprobs(mb)
                out[i : i + lp.shape[0], : lp.shape[1]] = lp
        self.model.train()
        return out

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimizer step per `rows_per_update` rows (all rows by default)."""
        b = int(batch["tokens"].shape[0])
        n = self.rows_per_update or b
        sums: dict[str, list[float]] = {}
        norms = []
        for start in range(0, b, n):
            part = {k: v[start : start + n] for k, v in batch.items() if hasattr(v, "shape")}
            stats, norm = self._update(part)
            if norm is not None:
                norms.append(norm)
            for k, (s, c) in stats.items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
        self.steps += 1
        metrics = {k.replace(" ", "_"): (s / c if c else float("nan")) for k, (s, c) in sums.items()}
        pg = sums.get("pg loss", [0.0, 0.0])
        metrics.update(loss=pg[0] / pg[1] if pg[1] else 0.0, tokens=int(pg[1]),
                       grad_norm=max(norms) if norms else 0.0, optimizer_steps=len(norms))
        return metrics

    def _update(self, batch: dict[str, Any]):
        import torch

        from ra3_megatron.core.losses import policy_gradient_loss

        total = float(batch["loss_mask"].sum())
        if total == 0:
            return {}, None
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, list[float]] = {}
        for mb in self._slices(batch):
            logp = self._token_logprobs(mb)
            parts = policy_gradient_loss(
                logp, mb["old_logprobs"], mb["advantages"], mb["loss_mask"],
                clip_eps=self.clip_eps, kl_coef=self.kl_coef, ref_logprobs=mb.get("ref_logprobs"),
            )
            (parts.loss_sum / total).backward()  # one token count per update: micro-batching changes nothing
            for k, v in parts.stats.items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += float(v[0])
                acc[1] += float(v[1])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return sums, float(grad_norm)

    def close(self) -> None:
        self.model = self.optimizer = None

    def save_state(self, out_dir: str | Path) -> None:
        """The optimizer's state (AdamW moments and step counts) and the step count, written
        atomically: what a resumed run needs beside the exported weights."""
        import os

        import torch

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "optimizer.pt.tmp"
        torch.save({"optimizer": self.optimizer.state_dict(), "steps": self.steps}, tmp)
        os.replace(tmp, out / "optimizer.pt")

    def load_state(self, state_dir: str | Path) -> None:
        import torch

        state = torch.load(Path(state_dir) / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def named_weights(self):
        """(HF name, tensor) of the live model: the transformers names are the HF names."""
        return self.model.state_dict().items()

    def export_weights(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                     "vocab.json", "merges.txt", "generation_config.json"):
            src = self.model_dir / name
            if src.is_file() and not (out / name).exists():
                (out / name).write_bytes(src.read_bytes())
