"""RL on q: search groups -> policy-gradient batches -> a `PolicyTrainer` step -> new rollout weights.

A batch is a dict of [B, s] tensors in the Megatron micro-batch layout (`megatron.forward_step`):
`tokens`, `labels` (tokens shifted by one), `loss_mask` (1 on the labels that are actions: the
decision token of every option, plus the thought tokens and the newline ending a thought),
`position_ids`, `advantages` (the option's group-relative advantage on its loss tokens),
`old_logprobs` (log q(label) before the step: from q's rollout engine, which holds the trainer's
weights and most prefixes already, or from a trainer forward pass) and, with a KL term,
`ref_logprobs` (log pi(label) from the scorer engine: q starts as a copy of pi).
Groups whose advantages are all zero carry no signal and are dropped.

Trainers implement `PolicyTrainer` (`estep.trainers`: torch/transformers, `estep.megatron_trainer`:
the MegatronEngine with the policy-gradient loss). After every step the new weights go to the
rollout engine that samples q: `trainer.export_weights(dir)` then `sampler.load_weights(dir)`.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ra3_megatron.estep.batch import run_searches
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.search import PositionGroup
from ra3_megatron.estep.stats import SearchStats
from ra3_megatron.rollout.base import ScoreGroup, ScoreOption

Batch = dict[str, Any]


@runtime_checkable
class PolicyTrainer(Protocol):
    def logprobs(self, batch: Batch) -> Any:
        """log q(labels) per position, [B, s] float32, under the current weights (no update)."""
        ...

    def step(self, batch: Batch) -> dict[str, float]:
        """One RL update on the batch; returns metrics (at least "loss")."""
        ...

    def export_weights(self, out_dir: str | Path) -> None:
        """The current weights as an HF checkpoint dir (safetensors + config + tokenizer)."""
        ...


@dataclass(frozen=True)
class RLExample:
    tokens: tuple[int, ...]
    loss_from: int  # index in tokens of the first token the loss covers
    advantage: float


def examples_from_groups(groups: Iterable[PositionGroup], max_tokens: int) -> list[RLExample]:
    """One example per option of every group with a non-zero advantage; long prefixes lose their start."""
    out = []
    for g in groups:
        if all(o.advantage == 0.0 for o in g.options):
            continue
        for o in g.options:
            tokens = (*g.prefix, *o.ids)
            start = len(g.prefix) + o.loss_start
            cut = max(0, len(tokens) - max_tokens)
            tokens, start = tokens[cut:], max(1, start - cut)
            if start < len(tokens):
                out.append(RLExample(tokens=tokens, loss_from=start, advantage=o.advantage))
    return out


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
        mask[r, e.loss_from - 1 : n] = 1.0  # label j is token j + 1
        adv[r, e.loss_from - 1 : n] = e.advantage
    position_ids = torch.arange(s).unsqueeze(0).expand(b, s).contiguous()
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": position_ids,
            "advantages": adv}


def trim(batch: Batch, multiple: int = 16) -> Batch:
    """The batch cut after its last loss position (rounded up to `multiple`): with causal
    attention the later columns change nothing, so a slice of short rows skips their padding."""
    import torch

    cols = batch["loss_mask"].nonzero()
    if len(cols) == 0:
        return batch
    s = int(batch["loss_mask"].shape[1])
    n = min(s, -(-(int(cols[:, 1].max()) + 1) // multiple) * multiple)
    return {k: (v[:, :n].contiguous() if torch.is_tensor(v) and v.dim() == 2 else v) for k, v in batch.items()}


def engine_logprobs(engine, batch: Batch) -> Any:
    """log p(labels) per position from a rollout engine, [B, s]; 0 outside [first, last] loss
    position of each row. A row is one group: the tokens before its first loss position are the
    prefix, so an engine with a prefix store (the transformers backend) computes only the option."""
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
    for (r, first, last), scores in zip(rows, engine.score_groups(groups)):
        out[r, first:last] = torch.tensor(scores[0], dtype=torch.float32)
    return out


class _Clock:
    """Seconds per phase of an RL step, for the step's record."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 4)
        self._t = now


def snippet_cycle(stream_factory: Callable[[], Iterator[tuple[str, str]]]) -> Iterator[tuple[str, str]]:
    """The snippets of the stream, restarted at its end (a corpus smaller than the RL steps need)."""
    while True:
        empty = True
        for item in stream_factory():
            empty = False
            yield item
        if empty:
            return


def run_rl(
    snippets: Iterator[tuple[str, str]],
    *,
    sampler,
    scorer,
    trainer: PolicyTrainer,
    cfg: EStepConfig,
    work_dir: str | Path,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """`cfg.rl_steps` steps: search `rl_snippets` snippets, update q, reload q into the sampler."""
    if cfg.rl_steps and sampler is scorer:
        raise ValueError("RL on q needs a sampler engine separate from the scorer pi (pi stays fixed)")
    work = Path(work_dir)
    pad_id = getattr(sampler.tokenizer, "pad_token_id", None) or 0
    history: list[dict[str, Any]] = []
    previous: Path | None = None
    for step in range(cfg.rl_steps):
        clock = _Clock()
        jobs = list(itertools.islice(snippets, cfg.rl_snippets))
        results = run_searches(jobs, sampler=sampler, scorer=scorer, cfg=cfg, phase=f"rl{step}")
        clock.lap("search_s")
        stats = SearchStats()
        for r in results:
            stats.merge(r.stats)
        examples = examples_from_groups((g for r in results for g in r.groups), cfg.max_rl_tokens)
        # Shortest first: the trainer's update slices then hold rows of similar length, so
        # trimming each slice after its last loss position leaves little padding to compute.
        examples.sort(key=lambda e: len(e.tokens))
        record: dict[str, Any] = {"step": step, **stats.summary(), "groups": sum(len(r.groups) for r in results),
                                  "examples": len(examples)}
        if examples:
            batch = build_batch(examples, pad_id=pad_id)
            if cfg.old_logprobs == "engine" and getattr(sampler, "trainer_exact_logprobs", False):
                batch["old_logprobs"] = engine_logprobs(sampler, batch)
            else:
                batch["old_logprobs"] = trainer.logprobs(batch)
            if cfg.kl_coef:
                batch["ref_logprobs"] = engine_logprobs(scorer, batch)
            clock.lap("logprobs_s")
            record.update(trainer.step(batch))
            clock.lap("update_s")
            out = work / f"q_step{step}"
            trainer.export_weights(out)
            sampler.load_weights(str(out))
            clock.lap("sync_s")  # weight sync: export from the trainer + load into the live engine
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
            previous = out
        record.update(clock.laps)
        history.append(record)
        if on_step is not None:
            on_step(record)
    return history
