"""What every policy-gradient update here shares: examples, the batch layout, the trainer contract.

Used by q's RL in the E-step (`estep.rl`) and by GRPO (`rlvr`). A batch is a dict of [B, s]
tensors in the Megatron micro-batch layout (`megatron.forward_step`): `tokens`, `labels` (tokens
shifted by one), `loss_mask` (1 on the labels the loss covers), `position_ids`, `advantages` (the
example's advantage on its loss tokens), `old_logprobs` (the sampler's log-probs before the step)
and, with a KL term, `ref_logprobs`. Trainers implement `PolicyTrainer`
(`rl.torch_trainer`: torch/transformers; `rl.megatron_trainer`: the MegatronEngine with the
policy-gradient loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ra3_megatron.rollout.base import ScoreGroup, ScoreOption

Batch = dict[str, Any]


@dataclass(frozen=True)
class RLExample:
    tokens: tuple[int, ...]
    loss_from: int  # index in tokens of the first token the loss covers (it covers them to the end)
    advantage: float
    # Loss spans (from, to, advantage) of shorter examples whose tokens begin this one's and
    # that were folded into it (`fold_prefixes`): tokens[from:to] carry that advantage.
    folded: tuple[tuple[int, int, float], ...] = ()

    def spans(self) -> list[tuple[int, int, float]]:
        return [*self.folded, (self.loss_from, len(self.tokens), self.advantage)]



@runtime_checkable
class PolicyTrainer(Protocol):
    # Data parallelism: this trainer's rank among `dp` ranks that each step on their rows of a
    # batch all of them hold (`data_parallel_rows`, `rows_per_update` rows per optimizer step).
    dp: int
    dp_rank: int
    rows_per_update: int | None

    def logprobs(self, batch: Batch) -> Any:
        """log q(labels) per position, [B, s] float32, under the current weights (no update)."""
        ...

    def step(self, batch: Batch) -> dict[str, float]:
        """One RL update on the batch; returns metrics (at least "loss")."""
        ...

    def export_weights(self, out_dir: str | Path) -> None:
        """The current weights as an HF checkpoint dir (safetensors + config + tokenizer)."""
        ...

    def named_weights(self) -> Iterable[tuple[str, Any]]:
        """The current weights as (HF name, full tensor) pairs, for an engine's `update_weights`."""
        ...

    def save_state(self, out_dir: str | Path) -> None:
        """What a resumed run needs beyond the HF export: optimizer state (Adam moments), step."""
        ...

    def load_state(self, state_dir: str | Path) -> None: ...

    def close(self) -> None:
        """Release the model, the optimizer and any process group the trainer created."""
        ...


def fold_prefixes(examples: Sequence[RLExample]) -> list[RLExample]:
    """Fold every example whose tokens begin another example (and end before that one's loss
    starts) into that one's row: one row then trains both, with the same log-probs (attention
    is causal) and the same loss (a token sum), on fewer tokens.

    Why it pays: the E-step walks a snippet left to right, so the prefix at a later position is
    the infused text so far; `<act>`'s example (prefix + the decision token) and the chosen
    thought's example at every earlier position are prefixes of every later example of the
    snippet. Unfolded, each carries the whole prefix again: most of an RL step's tokens.
    In lexicographic order, the examples that begin with A follow A in one run, so A folds into
    its successor when it begins it; chains fold through."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].tokens)
    hosts: dict[int, RLExample] = {}  # original index -> the row it became
    carry: tuple[tuple[int, int, float], ...] = ()
    for k, i in enumerate(order):
        e = examples[i]
        e = RLExample(e.tokens, e.loss_from, e.advantage, (*carry, *e.folded))
        nxt = examples[order[k + 1]] if k + 1 < len(order) else None
        n = len(e.tokens)
        if nxt is not None and len(nxt.tokens) > n and nxt.tokens[:n] == e.tokens and nxt.loss_from >= n:
            carry = tuple(e.spans())
        else:
            carry = ()
            hosts[i] = e
    return [hosts[i] for i in sorted(hosts)]  # the rows in the examples' order


def build_batch(examples: Sequence[RLExample], pad_id: int = 0, multiple: int = 16) -> Batch:
    """Pad the examples into the [B, s] batch layout (s a multiple of `multiple`)."""
    import torch

    if not examples:
        raise ValueError("build_batch needs at least one example")
    longest = max(len(e.tokens) - 1 for e in examples)
    s = -(-longest // multiple) * multiple
    b = len(examples)
    tokens = torch.full((b, s), pad_id, dtype=torch.long)
    labels = torch.full((b, s), pad_id, dtype=torch.long)
    mask = torch.zeros((b, s), dtype=torch.float32)
    adv = torch.zeros((b, s), dtype=torch.float32)
    for r, e in enumerate(examples):
        n = len(e.tokens) - 1
        tokens[r, :n] = torch.tensor(e.tokens[:-1])
        labels[r, :n] = torch.tensor(e.tokens[1:])
        for start, end, advantage in e.spans():
            mask[r, start - 1 : end - 1] = 1.0  # label j is token j + 1
            adv[r, start - 1 : end - 1] = advantage
    position_ids = torch.arange(s).unsqueeze(0).expand(b, s).contiguous()
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": position_ids,
            "advantages": adv}


def data_parallel_rows(rows: int, rows_per_update: int, dp_rank: int, dp: int) -> list[int]:
    """This data-parallel rank's rows of a batch every rank holds whole (the same rows in the
    same order): each optimizer step's `rows_per_update` rows (the last step: what is left) are
    cut into `dp` consecutive near-equal parts and part `dp_rank` is this rank's. The union of a
    step's parts is the step one rank would take; with a token-sum loss and gradients summed over
    the ranks, the update is one rank's (`MegatronPolicyTrainer.step`)."""
    if rows_per_update % dp:
        raise ValueError(f"rows_per_update {rows_per_update} is not a multiple of the data-parallel size {dp}")
    out: list[int] = []
    for start in range(0, rows, rows_per_update):
        base, extra = divmod(min(rows_per_update, rows - start), dp)
        lo = start + dp_rank * base + min(dp_rank, extra)
        out.extend(range(lo, lo + base + (dp_rank < extra)))
    return out


def trainer_rows(trainer: PolicyTrainer, rows: int) -> list[int]:
    """The rows of a `rows`-row batch (held whole on every rank) that this trainer's rank trains."""
    if trainer.dp == 1:
        return list(range(rows))
    return data_parallel_rows(rows, trainer.rows_per_update, trainer.dp_rank, trainer.dp)


def take_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The batch's tensors at these rows (possibly none), other entries as they are."""
    import torch

    index = torch.tensor(list(rows), dtype=torch.long)
    return {k: (v.index_select(0, index) if torch.is_tensor(v) else v) for k, v in batch.items()}


def trim(batch: Batch, multiple: int = 16) -> Batch:
    """The batch cut after its last loss position (rounded up to `multiple`): with causal
    attention the later columns change nothing, so a slice of short rows skips their padding."""
    import torch

    cols = batch["loss_mask"].nonzero()
    if len(cols) == 0:
        return batch
    s = int(batch["loss_mask"].shape[1])
    n = min(s, -(-(int(cols[:, 1].max()) + 1) // multiple) * multiple)

    def cut(v):
        if not torch.is_tensor(v):
            return v
        if v.dim() == 4:  # attention_mask [b, 1, s, s]
            return v[:, :, :n, :n].contiguous()
        return v[:, :n].contiguous() if v.dim() == 2 else v

    return {k: cut(v) for k, v in batch.items()}


def engine_logprobs(engine, batch: Batch) -> Any:
    """log p(labels) per position from a rollout engine, [B, s]; 0 outside [first, last] loss
    position of each row. The tokens before a row's first loss position are a search prefix, so
    an engine with a prefix cache (vLLM, hf-cpu) computes only the rest (a folded
    row's later options score the code between them too, which costs a little, not the prefix)."""
    import torch

    groups, rows = [], []
    for r in range(batch["tokens"].shape[0]):
        valid = batch["loss_mask"][r].nonzero()
        if len(valid) == 0:
            continue
        first, last = int(valid[0]), int(valid[-1]) + 1
        seq = [int(batch["tokens"][r, 0]), *batch["labels"][r, :last].tolist()]  # seq[j + 1] = label j
        groups.append(ScoreGroup(tuple(seq[: first + 1]), (ScoreOption((), tuple(seq[first + 1 :])),)))
        rows.append((r, first, last))
    out = torch.zeros_like(batch["loss_mask"], dtype=torch.float32)
    answers = engine.score_groups(groups) if groups else []  # a data-parallel rank may hold no row
    for (r, first, last), scores in zip(rows, answers):
        out[r, first:last] = torch.tensor(scores[0], dtype=torch.float32)
    return out
