"""RL on q: search groups -> policy-gradient batches -> a `PolicyTrainer` step -> new rollout weights.

A batch is a dict of [B, s] tensors in the Megatron micro-batch layout (`megatron.forward_step`):
`tokens`, `labels` (tokens shifted by one), `loss_mask` (1 on the labels that are actions: the
decision token of every option, plus the thought tokens and the newline ending a thought),
`position_ids`, `advantages` (the option's group-relative advantage on its loss tokens),
`old_logprobs` (log q(label) before the step: from q's rollout engine, which holds the trainer's
weights and most prefixes already, or from a trainer forward pass) and, with a KL term,
`ref_logprobs` (log pi(label) from the scorer engine: q starts as a copy of pi).
Groups whose advantages are all zero carry no signal and are dropped.

The batch layout, the examples and the trainers (`PolicyTrainer`: `rl.torch_trainer`,
`rl.megatron_trainer`) are shared with GRPO in `ra3_megatron.rl`. After every step the new weights go to the
rollout engine that samples q (`rl.sync.sync_weights`): in memory where the engine takes named
tensors, else through a folder the trainer writes and the engine reads.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ra3_megatron.estep.batch import run_searches
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.search import PositionGroup
from ra3_megatron.estep.stats import SearchStats
from ra3_megatron.rl import tree_rows
from ra3_megatron.rl.batch import (
    Batch,
    PolicyTrainer,
    RLExample,
    build_batch,
    engine_logprobs,
    fold_prefixes,
    take_rows,
    trainer_rows,
)
from ra3_megatron.rl.job import Job
from ra3_megatron.rl.layout import RLLayout, policy_trainer_factory
from ra3_megatron.rl.sync import sync_weights
from ra3_megatron.rollout.base import engines_asleep
from ra3_megatron.rollout.settings import EngineSettings

T = TypeVar("T")


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


def policy_batch(examples: Sequence[RLExample], *, sampler, scorer, trainer: PolicyTrainer, cfg: EStepConfig,
                 pad_id: int) -> tuple[Batch, dict[str, Any]]:
    """This rank's rows of the step's batch with old (and, with KL, reference) log-probs: tree
    rows when the config asks for them and the trainer can train them (`rl.tree_rows`), else one
    row per example. Every rank builds the whole batch from the same examples and keeps its
    data-parallel rows (all of them on one rank). Engine log-probs are computed on the linear rows
    (engines score sequences) and moved over. Returns the rows and the whole batch's record:
    rows, tokens they hold (padding aside), layout."""

    linear = build_batch(examples, pad_id=pad_id)
    use_engine = cfg.old_logprobs == "engine" and sampler.capabilities.trainer_exact_logprobs
    trees = cfg.rl_rows == "tree" and getattr(trainer, "supports_tree_rows", False)
    if trees:
        rows = sorted(tree_rows.plan_trees(examples, cfg.rl_tree_tokens), key=lambda r: r.length)
        batch, where = tree_rows.build_tree_batch(examples, rows, pad_id=pad_id)
        src = tree_rows.linear_positions(examples)
        row_tokens, layout = sum(r.length for r in rows), "tree"
    else:
        batch = linear
        row_tokens, layout = sum(len(e.tokens) for e in examples), "plain" if cfg.rl_rows == "plain" else "fold"
    n_rows = int(batch["tokens"].shape[0])
    mine = trainer_rows(trainer, n_rows)
    own = take_rows(batch, mine)

    def from_engine(engine):  # the whole batch on this rank's engine, then this rank's rows
        lp = engine_logprobs(engine, linear)
        return (tree_rows.move(lp, src, where, batch["loss_mask"].shape) if trees else lp)[mine]

    own["old_logprobs"] = from_engine(sampler) if use_engine else trainer.logprobs(own)
    if cfg.kl_coef:
        own["ref_logprobs"] = from_engine(scorer)
    return own, {"rows": n_rows, "row_tokens": row_tokens, "row_layout": layout}


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
    job: Job | None = None,
) -> list[dict[str, Any]]:
    """`cfg.rl_steps` steps: search `rl_snippets` snippets, update q, sync q into the sampler.

    Over a job of several ranks (`job`, with a trainer over the same ranks), each rank searches
    its share of the step's snippets with its own engines, all ranks gather the groups in
    snippet order (so each builds the batch one process would), the trainer takes one
    data-parallel update, and every rank's sampler gets the new weights. The history is the same
    on every rank."""
    if cfg.rl_steps and sampler is scorer:
        raise ValueError("RL on q needs a sampler engine separate from the scorer pi (pi stays fixed)")
    job = job or Job()
    work = Path(work_dir)
    pad_id = getattr(sampler.tokenizer, "pad_token_id", None) or 0
    history: list[dict[str, Any]] = []
    for step in range(cfg.rl_steps):
        clock = _Clock()
        jobs = list(itertools.islice(snippets, cfg.rl_snippets))
        mine = run_searches(job.share(jobs), sampler=sampler, scorer=scorer, cfg=cfg, phase=f"rl{step}")
        results = job.gather_in_order([(r.groups, r.stats) for r in mine])
        clock.lap("search_s")
        stats = SearchStats()
        for _, s in results:
            stats.merge(s)
        examples = examples_from_groups((g for groups, _ in results for g in groups), cfg.max_rl_tokens,
                                        fold=cfg.rl_rows != "plain")
        # Shortest first: the trainer's update slices then hold rows of similar length, so
        # trimming each slice after its last loss position leaves little padding to compute.
        examples.sort(key=lambda e: len(e.tokens))
        record: dict[str, Any] = {"step": step, **stats.summary(), "groups": sum(len(g) for g, _ in results),
                                  "examples": sum(len(e.spans()) for e in examples),
                                  "snippet_ids": [snippet_id for snippet_id, _ in jobs], "ranks": job.world}
        if examples:  # the same on every rank: all hold the gathered examples
            batch, rows = policy_batch(examples, sampler=sampler, scorer=scorer, trainer=trainer, cfg=cfg,
                                       pad_id=pad_id)
            record.update(rows)
            clock.lap("logprobs_s")
            with engines_asleep(sampler, scorer):  # the trainer gets the accelerator's memory
                record.update(trainer.step(batch))
            clock.lap("update_s")
            synced = sync_weights(trainer, [sampler], mode=cfg.weight_sync, folder=work / "sync", job=job)
            clock.lap("sync_s")  # trainer -> live engine, in memory or through a folder
            record["sync_mode"] = synced.mode
        record.update(clock.laps)
        history.append(record)
        if on_step is not None:
            on_step(record)
    return history


def q_trainer_factory(cfg: EStepConfig, layout: RLLayout, engines: EngineSettings, *, job_wide: bool = False,
                      world: int = 1) -> Callable[[str], Any]:
    """model dir -> q's trainer, as the run's layout and engines say (`job_wide`: one Megatron
    trainer over all `world` ranks of the torchrun job)."""
    kind = layout.trainer_kind(engines.backend)
    # Megatron: micro-batches of at most 4 rows and an optimizer step of 4 of them
    mbs = cfg.micro_batch if kind == "torch" else min(cfg.micro_batch, 4)
    return policy_trainer_factory(layout, backend=engines.backend, lr=cfg.lr, clip_eps=cfg.clip_eps,
                                  kl_coef=cfg.kl_coef, micro_batch=mbs, rows=4 * mbs, seq_length=cfg.max_rl_tokens,
                                  seed=cfg.seed, threads=engines.threads, job_wide=job_wide, world=world)
