"""One whole E-step: RL on q over a few steps, then the infusion pass, then the statistics.

    result = run_estep(EStepRun(model="ckpt/", input="src/", output="out/estep"),
                       cfg, make_engine=lambda d: create_engine("hf", model=d),
                       make_trainer=lambda: TorchPolicyTrainer("ckpt/"))

- pi (the scorer) is the model at `model`, fixed for the whole E-step; q (the sampler) starts as
  a copy of it and is the one RL trains; with rl_steps = 0 one engine serves as both.
- RL on q draws `rl_snippets * rl_steps` snippets from the whole stream (seeded, new in every EM
  round; cycled when the corpus is smaller). With `rl_ranks="all"` (the workers are the ranks of
  one torchrun job and the trainer spans them) every worker searches its share of each step's
  snippets, the trainer takes one data-parallel update, and each worker's q engine gets the new
  weights in memory. With `rl_ranks="first"` worker 0 runs RL alone and the others wait for
  OUTPUT/rl/history.json, then load q from OUTPUT/rl/q. Either way q's final weights are written
  to OUTPUT/rl/q (what a resumed run loads) and the step history to OUTPUT/rl/history.json.
- The infusion pass is sharded and resumable (`estep.infuse`, `estep.shards`); the worker that
  completes the set writes manifest.json, stats.json, report.md and TensorBoard scalars.
A rerun on the same output resumes at the phase where it stopped; a finished one returns its stats.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.infuse import infuse, iter_snippets
from ra3_megatron.estep.rl import rl_seed, run_rl, sample_snippets
from ra3_megatron.estep.shards import try_write_manifest, write_rank_done
from ra3_megatron.estep.stats import SearchStats, atomic_write_text, write_stats
from ra3_megatron.rollout.common import release_cuda_memory


@dataclass(kw_only=True)
class EStepRun:
    model: str  # HF checkpoint dir of pi
    input: str  # anything `ra3 prepare` reads
    output: str
    rank: int = 0
    world: int = 1
    limit: int | None = None  # only the first N snippets of the stream (quick runs)
    keep_q: bool = False  # keep OUTPUT/rl/q (q's weights) after the E-step finished
    progress: bool = True
    wait_timeout_s: float = 24 * 3600.0  # rl_ranks="first": workers > 0 wait this long for worker 0's RL
    iteration: int = 0  # for TensorBoard steps when run inside EM
    # Who runs RL on q: "all" workers (the ranks of one torchrun job; `make_trainer` must build a
    # trainer over all of them and the default process group must exist before any engine), or
    # the "first" alone.
    rl_ranks: str = "first"

    def __post_init__(self) -> None:
        if self.rl_ranks not in ("first", "all"):
            raise ConfigError(f"rl_ranks must be 'first' or 'all', got {self.rl_ranks!r}")


def _check_config(out: Path, run: EStepRun, cfg: EStepConfig) -> None:
    """Refuse to resume an output dir written with another configuration."""
    body = {"estep": cfg.to_dict(), "model": run.model, "input": run.input, "world": run.world, "limit": run.limit}
    path = out / "config.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(body)):
            changed = sorted(k for k in set(old) | set(body) if old.get(k) != json.loads(json.dumps(body)).get(k))
            raise ConfigError(
                f"{out} holds an E-step run with another configuration ({', '.join(changed)} differ); "
                "use a new --output or the same options"
            )
    elif run.rank == 0:
        atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def _wait_for(path: Path, timeout_s: float) -> None:
    start = time.monotonic()
    while not path.is_file():
        if time.monotonic() - start > timeout_s:
            raise ConfigError(f"timed out after {timeout_s:.0f} s waiting for {path} (written by worker 0)")
        time.sleep(2.0)


def _run_rl_phase(run: EStepRun, cfg: EStepConfig, out: Path, scorer, make_engine, make_trainer,
                  reader_opts: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], dict[str, float]]:
    """RL on q (on this worker, and on the others too with rl_ranks="all"): returns q's engine,
    holding the trained weights, the step history (the same on every rank) and the seconds spent."""
    from ra3_megatron.rl.job import Job

    if make_trainer is None:
        raise ConfigError("rl_steps > 0 needs a policy trainer")
    job = Job.of_default_group() if run.rl_ranks == "all" else Job()
    if job.world != (run.world if run.rl_ranks == "all" else 1):
        raise ConfigError(f"rl_ranks='all' over {run.world} workers, but the default process group has "
                          f"{job.world} ranks: start the workers with torchrun and the process group first")
    t0 = time.perf_counter()
    sampler = make_engine(run.model)
    trainer = make_trainer()
    seconds = {"load": time.perf_counter() - t0}
    t0 = time.perf_counter()  # "rl": the steps themselves (search, update, weight sync)
    (out / "rl").mkdir(exist_ok=True)

    def log_step(r: dict[str, Any]) -> None:
        if run.progress and job.is_main:
            print(f"[estep] RL step {r['step'] + 1}/{cfg.rl_steps}: reward {r['reward']:.4f}, "
                  f"think rate {r['think_rate']:.3f}, rollout share {r['rollout_share']:.2f}, "
                  f"loss {r.get('loss', float('nan')):.4f}, {r['examples']} examples in "
                  f"{r.get('rows', 0)} {r.get('row_layout', '')} rows of {r.get('row_tokens', 0)} tokens"
                  + (f", {job.world} ranks" if job.world > 1 else ""), flush=True)

    # The steps' snippets: a seeded draw over the whole corpus, new in every EM round (the same
    # draw on every rank). A corpus smaller than the steps need is cycled.
    stream = iter_snippets(run.input, scorer.tokenizer, cfg, **reader_opts)
    picked = sample_snippets(stream, cfg.rl_steps * cfg.rl_snippets, rl_seed(cfg.seed, run.iteration))
    history = run_rl(itertools.cycle(picked), sampler=sampler, scorer=scorer, trainer=trainer, cfg=cfg,
                     work_dir=out / "rl", on_step=log_step, job=job)
    q_dir = out / "rl" / "q"
    if any("loss" in r for r in history):  # q moved: its weights for resumed runs and --keep-q
        if job.is_main:
            shutil.rmtree(q_dir, ignore_errors=True)
        trainer.export_weights(q_dir)  # collective over the trainer's ranks; its first rank writes
    trainer.close()
    del trainer
    release_cuda_memory()  # q's trainer (weights, grads, Adam) leaves the GPU to the engines
    if job.is_main:
        atomic_write_text(out / "rl" / "history.json", json.dumps(history, indent=1) + "\n")
    seconds["rl"] = time.perf_counter() - t0
    return sampler, history, seconds


def run_estep(
    run: EStepRun,
    cfg: EStepConfig,
    *,
    make_engine: Callable[[str], Any],
    make_trainer: Callable[[], Any] | None = None,
    reader_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the E-step; returns the stats dict (also written to OUTPUT/stats.json)."""
    out = Path(run.output)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, run, cfg)
    from ra3_megatron.rl.job import Job

    # With RL over all workers they are the ranks of one job: the first decides for all whether
    # the output is finished (another rank may be writing the manifest right now).
    job = Job.of_default_group() if run.rl_ranks == "all" else Job()
    if job.from_main((out / "manifest.json").is_file() and (out / "stats.json").is_file()):
        return json.loads((out / "stats.json").read_text(encoding="utf-8"))
    reader_opts = dict(reader_opts or {})
    seconds: dict[str, Any] = {}
    t0 = time.perf_counter()
    scorer = make_engine(run.model)
    seconds["load"] = time.perf_counter() - t0
    # pi and q on one engine (rollout.shared): its weight swaps in this E-step (it may outlive it)
    swaps0 = (getattr(scorer, "swaps", None), getattr(scorer, "swap_seconds", 0.0))
    history_path = out / "rl" / "history.json"
    q_dir = out / "rl" / "q"
    sampler, history = scorer, None
    if cfg.rl_steps > 0:
        rl_here = run.rl_ranks == "all" or run.rank == 0
        if rl_here and not history_path.is_file():
            sampler, history, rl_seconds = _run_rl_phase(run, cfg, out, scorer, make_engine, make_trainer,
                                                         reader_opts)
            seconds["load"] += rl_seconds.pop("load")
            seconds.update(rl_seconds)
        else:
            if run.rl_ranks == "first":
                _wait_for(history_path, run.wait_timeout_s)
            sampler = make_engine(str(q_dir)) if q_dir.is_dir() else make_engine(run.model)
    if history is None:  # RL ran before (a resumed run) or on another worker, which wrote it
        history = json.loads(history_path.read_text(encoding="utf-8")) if history_path.is_file() else []
    job.barrier()  # every rank holds q before any can finish the output and remove OUTPUT/rl/q

    from ra3_megatron.data.skips import SkipReport

    t0 = time.perf_counter()
    report = SkipReport()
    snippets = iter_snippets(run.input, scorer.tokenizer, cfg, report=report, **reader_opts)
    result = infuse(snippets, out, sampler=sampler, scorer=scorer, cfg=cfg, rank=run.rank, world=run.world,
                    limit=run.limit, progress=run.progress)
    seconds["infuse"] = time.perf_counter() - t0
    seconds["infuse_parts"] = result["seconds"]  # probe, chain, score, sample, search (batch.run_searches)
    swaps = None if swaps0[0] is None else scorer.swaps - swaps0[0]
    if swaps is not None:
        seconds["swap"] = scorer.swap_seconds - swaps0[1]
    skipped = {**dict(report.counts), **({"duplicate-id": result["duplicates"]} if result["duplicates"] else {})}
    write_rank_done(out, run.rank, result["shards"], result["stats"], {"skipped": skipped, "seconds": seconds})
    manifest = try_write_manifest(out, run.world, {"config": cfg.to_dict(), "model": run.model})
    for engine in {id(e): e for e in (sampler, scorer)}.values():
        engine.close()
    if manifest is None:
        return {"rank": run.rank, "pending": True, "stats": result["stats"].to_dict()}
    total = SearchStats.from_dict(manifest["stats"])
    stats = {
        "config": cfg.to_dict(),
        "iteration": run.iteration,
        "rl": history,
        "infusion": {"counts": total.to_dict(), "summary": total.summary(), "skipped": skipped,
                     "records": manifest["records"]},
        "seconds": seconds,
        **({"weight_swaps": swaps} if swaps is not None else {}),
    }
    write_stats(out, stats)
    if not run.keep_q:
        shutil.rmtree(out / "rl" / "q", ignore_errors=True)
    return stats

