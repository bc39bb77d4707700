"""RL on q: search groups -> policy-gradient batches -> a `PolicyTrainer` step -> new rollout weights.

A batch is a dict of [B, s] tensors in the Megatron micro-batch layout (`megatron.forward_step`):
`tokens`, `labels` (tokens shifted by one), `loss_mask` (1 on the labels that are actions: the
decision token of every option, plus the thought tokens and the newline ending a thought),
`position_ids`, `advantages` (the option's group-relative advantage on its loss tokens),
`old_logprobs` (log q(label) before the step: from q's rollout engine, which holds the trainer's
weights and most prefixes already, or from a trainer forward pass) and, with a KL term,
`ref_logprobs` (log pi(label) from the scorer engine: q starts as a copy of pi).
Groups whose advantages are all zero carry no signal and are dropped.

Trainers implement `PolicyTrainer` (`estep.torch_trainer`: torch/transformers, `estep.megatron_trainer`:
the MegatronEngine with the policy-gradient loss). After every step the new weights go to the
rollout engine that samples q: `trainer.export_weights(dir)` then `sampler.load_weights(dir)`.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from ra3_megatron.estep import tree_rows
from ra3_megatron.estep.batch import run_searches
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.rl_example import RLExample
from ra3_megatron.estep.search import PositionGroup
from ra3_megatron.estep.stats import SearchStats
from ra3_megatron.rollout.base import ScoreGroup, ScoreOption, engines_asleep

T = TypeVar("T")

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

    def close(self) -> None:
        """Release the model, the optimizer and any process group the trainer created."""
        ...


def examples_from_groups(groups: Iterable[PositionGroup], max_tokens: int, fold: bool = True) -> list[RLExample]:
    """One example per option of every group with a non-zero advantage; long prefixes lose their
    start. `fold`: examples that begin another one ride in its row (`fold_prefixes`)."""
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
    return fold_prefixes(out) if fold else out


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
    an engine with a prefix store (the transformers backend) computes only the rest (a folded
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
    answers = engine.score_groups(groups)
    for (r, first, last), scores in zip(rows, answers):
        out[r, first:last] = torch.tensor(scores[0], dtype=torch.float32)
    return out


def policy_batch(examples: Sequence[RLExample], *, sampler, scorer, trainer: PolicyTrainer, cfg: EStepConfig,
                 pad_id: int) -> tuple[Batch, dict[str, Any]]:
    """The step's batch with old (and, with KL, reference) log-probs: tree rows when the config
    asks for them and the trainer can train them (`estep.tree_rows`), else one row per example.
    Engine log-probs are computed on the linear rows (engines score sequences) and moved over.
    Returns the batch and its record: rows, tokens they hold (padding aside), layout."""

    linear = build_batch(examples, pad_id=pad_id)
    use_engine = cfg.old_logprobs == "engine" and getattr(sampler, "trainer_exact_logprobs", False)
    trees = cfg.rl_rows == "tree" and getattr(trainer, "supports_tree_rows", False)
    if trees:
        rows = sorted(tree_rows.plan_trees(examples, cfg.rl_tree_tokens), key=lambda r: r.length)
        batch, where = tree_rows.build_tree_batch(examples, rows, pad_id=pad_id)
        src = tree_rows.linear_positions(examples)
        row_tokens, layout = sum(r.length for r in rows), "tree"
    else:
        batch = linear
        row_tokens, layout = sum(len(e.tokens) for e in examples), "plain" if cfg.rl_rows == "plain" else "fold"

    def from_engine(engine):
        lp = engine_logprobs(engine, linear)
        return tree_rows.move(lp, src, where, batch["loss_mask"].shape) if trees else lp

    batch["old_logprobs"] = from_engine(sampler) if use_engine else trainer.logprobs(batch)
    if cfg.kl_coef:
        batch["ref_logprobs"] = from_engine(scorer)
    return batch, {"rows": int(batch["tokens"].shape[0]), "row_tokens": row_tokens, "row_layout": layout}


class _Clock:
    """Seconds per phase of an RL step, for the step's record."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 4)
        self._t = now


def sample_snippets(stream: Iterable[T], k: int, seed: int) -> list[T]:
    """`k` items drawn uniformly without replacement from a stream of unknown length, in random
    order (reservoir sampling: one pass, `k` items in memory); all of them when it holds fewer.

    RL on q draws its snippets this way from the whole corpus, with a seed per EM round: taking
    the stream's first snippets would train q on the same few files (the first in path order)
    in every round.
    """
    rng = random.Random(seed)
    chosen: list[T] = []
    for i, item in enumerate(stream):
        if i < k:
            chosen.append(item)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                chosen[j] = item
    rng.shuffle(chosen)
    return chosen


def rl_seed(seed: int, iteration: int) -> int:
    """The seed of one EM round's RL snippet draw (a new draw every round)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00rl-snippets\x00{iteration}".encode()).digest()[:8], "little")


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
        examples = examples_from_groups((g for r in results for g in r.groups), cfg.max_rl_tokens,
                                        fold=cfg.rl_rows != "plain")
        # Shortest first: the trainer's update slices then hold rows of similar length, so
        # trimming each slice after its last loss position leaves little padding to compute.
        examples.sort(key=lambda e: len(e.tokens))
        record: dict[str, Any] = {"step": step, **stats.summary(), "groups": sum(len(r.groups) for r in results),
                                  "examples": sum(len(e.spans()) for e in examples),
                                  "snippet_ids": [snippet_id for snippet_id, _ in jobs]}
        if examples:
            batch, rows = policy_batch(examples, sampler=sampler, scorer=scorer, trainer=trainer, cfg=cfg,
                                       pad_id=pad_id)
            record.update(rows)
            clock.lap("logprobs_s")
            with engines_asleep(sampler, scorer):  # the trainer gets the accelerator's memory
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
