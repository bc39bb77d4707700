"""The GRPO loop: sample G completions per problem, reward them in the sandbox, update the policy.

One step:
1. `prompts_per_step` problems (a seeded permutation per epoch, so a resumed run sees the same
   problems at the same step), G completions each from the rollout engine (a seed per step and
   problem, so a resumed step samples what the uninterrupted run sampled);
2. reward 1 when the program passes every test in the sandbox, else 0 (`Verifier`);
3. group-relative advantages (`core.rewards.group_advantages`, GRPO or RLOO);
4. the batch (`rlvr.batch`): prompt + completion tokens, loss on the completion tokens; old
   log-probs from a trainer forward pass or from the engine (`GRPOConfig.old_logprobs`); with
   a KL term, reference log-probs from a second engine holding the initial policy;
5. `trainer.step(batch)` (the E-step's `PolicyTrainer`: Megatron or torch), the new weights
   exported to RUN/policy/step_K and loaded into the live rollout engine (every step);
6. every `eval_every` steps (and at step 0 and the last step) greedy pass@1 on held-out problems.
The exported weights are also the checkpoint: RUN/state.json names the last finished step and its
weights, and a rerun resumes there with the trainer's optimizer state (`save_state` /
`load_state`, saved beside the weights as RUN/policy/step_K/trainer_state).

Over a torchrun job (`job`, with a trainer built over the same ranks) every rank samples and
rewards its share of the step's problems with its own engine, all ranks gather the groups in
problem order, each data-parallel rank trains its rows of the whole batch, and every rank's
engine gets the new weights; the held-out problems are shared out the same way. The first rank
writes the metrics, the report and state.json.

    result = run_grpo(cfg, problems=train, heldout=test, engine=engine, trainer=trainer,
                      verifier=Verifier(), run_dir="runs/grpo", model_dir="ckpt/")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ra3_megatron.core.rewards import group_advantages
from ra3_megatron.errors import ConfigError
from ra3_megatron.files import atomic_write_text
from ra3_megatron.rl.batch import engine_logprobs, take_rows, trainer_rows
from ra3_megatron.rl.job import Job
from ra3_megatron.rl.sync import sync_weights
from ra3_megatron.rlvr.batch import batch_from_rows, logprob_gap, rollout_stats, rows_from_rollouts
from ra3_megatron.rlvr.config import GRPOConfig
from ra3_megatron.rlvr.problems import Problem
from ra3_megatron.rlvr.runlog import RunLog
from ra3_megatron.rollout.base import SamplingConfig, engines_asleep
from ra3_megatron.rollout.common import prompt_ids

STATE = "state.json"


def step_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def problems_for_step(n_problems: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the step's problems: epochs of seeded permutations, read consecutively."""
    if n_problems < 1:
        raise ConfigError("RLVR needs at least one training problem")
    out = []
    pos = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(pos, n_problems)
        perm = np.random.default_rng(step_seed(seed, "epoch", epoch)).permutation(n_problems)
        take = min(per_step - len(out), n_problems - offset)
        out.extend(int(i) for i in perm[offset : offset + take])
        pos += take
    return out


def generate(engine, problems: Sequence[Problem], sampling: SamplingConfig, seeds: Sequence[int] | None = None):
    """(prompt ids, completions) per problem; one engine call per distinct stop-sequence tuple.
    `seeds`: one sampling seed per problem (else `sampling.seed` for all)."""
    ids = [prompt_ids(engine.tokenizer, p.prompt) for p in problems]
    out: list[Any] = [None] * len(problems)
    by_stop: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(problems):
        by_stop.setdefault(tuple(p.stop), []).append(i)
    for stop, idx in by_stop.items():
        cfg = dataclasses.replace(sampling, stop=stop)
        configs = cfg if seeds is None else [dataclasses.replace(cfg, seed=seeds[i]) for i in idx]
        answers = engine.generate([ids[i] for i in idx], configs)
        for i, comps in zip(idx, answers):
            out[i] = comps
    return ids, out


def heldout_pass1(engine, problems: Sequence[Problem], verifier, *, max_tokens: int, seed: int,
                  job: Job | None = None) -> float:
    """Greedy pass@1: one completion per problem at temperature 0 (each rank of `job` its share)."""
    job = job or Job()
    mine = job.share(list(problems))
    rewards: list[float] = []
    if mine:
        _, comps = generate(engine, mine, SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed))
        rewards = [float(r[0]) for r in verifier.rewards(mine, [[c[0].text] for c in comps])]
    return float(np.mean(job.gather_in_order(rewards)))


def rollouts(engine, chosen: Sequence[Problem], sampling: SamplingConfig, seeds: Sequence[int], verifier,
             job: Job) -> tuple[list, list, np.ndarray, dict[str, float]]:
    """(prompt ids, completions, rewards [problems, G], seconds) of the step's problems; each rank
    of `job` samples and rewards its share, then all hold every problem's, in problem order."""
    mine = job.share(list(range(len(chosen))))
    t0 = time.perf_counter()
    ids, comps = generate(engine, [chosen[i] for i in mine], sampling, seeds=[seeds[i] for i in mine]) if mine \
        else ([], [])
    t1 = time.perf_counter()
    rewards = verifier.rewards([chosen[i] for i in mine], [[c.text for c in g] for g in comps]) if mine else []
    seconds = {"rollout_s": t1 - t0, "reward_s": time.perf_counter() - t1}
    got = job.gather_in_order([(i, c, [float(x) for x in r]) for i, c, r in zip(ids, comps, rewards)])
    return [g[0] for g in got], [g[1] for g in got], np.asarray([g[2] for g in got], dtype=np.float64), seconds


def _load_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def resume_point(run_dir: str | Path, model_dir: str | Path) -> tuple[int, str]:
    """(finished steps, weights to start from): 0 and the original model, or the last checkpoint."""
    state = _load_state(Path(run_dir))
    if state is None:
        return 0, str(model_dir)
    return int(state["done"]), str(Path(run_dir) / state["weights"]) if state["weights"] else str(model_dir)


def _train(cfg: GRPOConfig, trainer, reference, ids, comps, rewards, pad_id: int, engines=()) -> dict[str, Any]:
    """Advantages -> batch -> one trainer step; {} when no group carries signal."""
    adv = group_advantages(rewards, cfg.advantage)
    rows = rows_from_rollouts(ids, comps, adv, max_seq_tokens=cfg.max_seq_tokens,
                              drop_zero_advantage=cfg.drop_zero_advantage)
    rec: dict[str, Any] = {"rows": len(rows)}
    if not rows:
        return rec
    batch = batch_from_rows(rows, pad_id=pad_id)
    if trainer.dp > 1:  # this data-parallel rank's rows of the batch every rank built
        batch = take_rows(batch, trainer_rows(trainer, len(rows)))
    rollout_lp = batch.pop("rollout_logprobs", None)
    if cfg.old_logprobs == "trainer" or rollout_lp is None:
        batch["old_logprobs"] = trainer.logprobs(batch)
        if rollout_lp is not None:
            rec["logprob_gap"] = logprob_gap({**batch, "rollout_logprobs": rollout_lp}, batch["old_logprobs"])
    else:
        batch["old_logprobs"] = rollout_lp
    if cfg.kl_coef:
        batch["ref_logprobs"] = engine_logprobs(reference, batch)
    with engines_asleep(*engines, reference):  # the trainer gets the accelerator's memory
        rec.update(trainer.step(batch))
    return rec


def run_grpo(
    cfg: GRPOConfig,
    *,
    problems: Sequence[Problem],
    heldout: Sequence[Problem],
    engine,
    trainer,
    verifier,
    run_dir: str | Path,
    model_dir: str | Path,
    reference=None,
    progress: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    job: Job | None = None,
) -> dict[str, Any]:
    """Run (or resume) GRPO; `engine` and `trainer` must already hold the `resume_point` weights.

    Metrics records: step 0 is the held-out pass@1 before training, step k the k-th update.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if cfg.kl_coef and reference is None:
        raise ConfigError("kl_coef > 0 needs a reference engine holding the initial policy")
    state = _load_state(run)
    done = int(state["done"]) if state else 0
    weights = state["weights"] if state else None
    if weights and (run / weights / "trainer_state").exists():
        trainer.load_state(run / weights / "trainer_state")
    heldout = list(heldout)[: cfg.eval_limit or None]
    job = job or Job()
    log = RunLog(run, resume_step=done if state else -1, total_steps=cfg.steps, progress=progress) if job.is_main \
        else None
    pad_id = getattr(engine.tokenizer, "pad_token_id", None) or 0
    evaluate = bool(heldout) and cfg.eval_every > 0
    if state is None:
        rec0: dict[str, Any] = {"step": 0}
        if evaluate:
            t0 = time.perf_counter()
            rec0["heldout_pass1"] = heldout_pass1(engine, heldout, verifier, max_tokens=cfg.eval_tokens,
                                                  seed=cfg.seed, job=job)
            rec0["eval_s"] = time.perf_counter() - t0
        if job.is_main:
            log.log(rec0)
            atomic_write_text(run / STATE, json.dumps({"done": 0, "weights": None}) + "\n")
    for step in range(done + 1, cfg.steps + 1):
        rec: dict[str, Any] = {"step": step, **({"ranks": job.world} if job.world > 1 else {})}
        chosen = [problems[i] for i in problems_for_step(len(problems), cfg.prompts_per_step, step - 1, cfg.seed)]
        # One seed per (step, problem): independent groups (one seed for the whole call would give
        # every prompt the same draws), and a resumed step samples what the uninterrupted run did.
        sampling = SamplingConfig(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_tokens=cfg.max_tokens, logprobs=True)
        seeds = [step_seed(cfg.seed, "rollout", step, p.task_id) for p in chosen]
        ids, comps, rewards, seconds = rollouts(engine, chosen, sampling, seeds, verifier, job)
        rec.update(seconds)
        rec.update(rollout_stats(rewards, comps))
        t0 = time.perf_counter()
        rec.update(_train(cfg, trainer, reference, ids, comps, rewards, pad_id, engines=(engine,)))
        rec["train_s"] = time.perf_counter() - t0
        old = weights
        if rec["rows"]:  # new weights: export (= checkpoint) and sync into the live engine
            t0 = time.perf_counter()
            weights = f"policy/step_{step:06d}"
            if job.is_main:
                shutil.rmtree(run / weights, ignore_errors=True)  # a half-written export of a crashed run
            trainer.export_weights(run / weights)  # collective over the trainer's ranks
            trainer.save_state(run / weights / "trainer_state")
            rec["save_s"] = time.perf_counter() - t0
            rec.update(sync_weights(trainer, [engine], mode=cfg.weight_sync, folder=run / weights,
                                    exported=True).metrics())
        if evaluate and (step % cfg.eval_every == 0 or step == cfg.steps):
            t0 = time.perf_counter()
            rec["heldout_pass1"] = heldout_pass1(engine, heldout, verifier, max_tokens=cfg.eval_tokens,
                                                 seed=cfg.seed, job=job)
            rec["eval_s"] = time.perf_counter() - t0
        if job.is_main:
            log.log(rec)
            atomic_write_text(run / STATE, json.dumps({"done": step, "weights": weights}) + "\n")
            if old and old != weights:
                shutil.rmtree(run / old, ignore_errors=True)  # only after state.json names the new weights
        if on_step is not None:
            on_step(rec)
    if not job.is_main:
        return {}
    log.close()
    return log.write_report(cfg)
