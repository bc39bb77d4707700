"""One whole E-step: RL on q over a few steps, then the infusion pass, then the statistics.

    result = run_estep(EStepRun(model="ckpt/", input="src/", output="out/estep"),
                       cfg, make_engine=lambda d: create_engine("hf", model=d),
                       make_trainer=lambda: TorchPolicyTrainer("ckpt/"))

- pi (the scorer) is the model at `model`, fixed for the whole E-step; q (the sampler) starts as
  a copy of it and is the one RL trains; with rl_steps = 0 one engine serves as both.
- RL runs on worker 0 (its snippets: the first `rl_snippets * rl_steps` of the stream, cycled
  when the corpus is smaller); q's final weights go to OUTPUT/rl/q and the step history to
  OUTPUT/rl/history.json. Other workers wait for that file, then load q.
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
    wait_timeout_s: float = 24 * 3600.0  # workers > 0 wait this long for worker 0's RL phase
    iteration: int = 0  # for TensorBoard steps when run inside EM


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
    if (out / "manifest.json").is_file() and (out / "stats.json").is_file():
        return json.loads((out / "stats.json").read_text(encoding="utf-8"))
    reader_opts = dict(reader_opts or {})
    seconds: dict[str, Any] = {}
    t0 = time.perf_counter()
    scorer = make_engine(run.model)
    seconds["load"] = time.perf_counter() - t0
    history_path = out / "rl" / "history.json"
    sampler = scorer
    if cfg.rl_steps > 0:
        if run.rank == 0 and not history_path.is_file():
            if make_trainer is None:
                raise ConfigError("rl_steps > 0 needs a policy trainer")
            t0 = time.perf_counter()
            sampler = make_engine(run.model)
            trainer = make_trainer()
            seconds["load"] += time.perf_counter() - t0
            t0 = time.perf_counter()  # "rl": the steps themselves (search, update, weight sync)
            (out / "rl").mkdir(exist_ok=True)

            def stream():
                return iter_snippets(run.input, scorer.tokenizer, cfg, **reader_opts)

            def log_step(r: dict[str, Any]) -> None:
                if run.progress:
                    print(f"[estep] RL step {r['step'] + 1}/{cfg.rl_steps}: reward {r['reward']:.4f}, "
                          f"think rate {r['think_rate']:.3f}, rollout share {r['rollout_share']:.2f}, "
                          f"loss {r.get('loss', float('nan')):.4f}, {r['examples']} examples in "
                          f"{r.get('rows', 0)} {r.get('row_layout', '')} rows of {r.get('row_tokens', 0)} tokens",
                          flush=True)

            # The steps' snippets: a seeded draw over the whole corpus, new in every EM round.
            picked = sample_snippets(stream(), cfg.rl_steps * cfg.rl_snippets, rl_seed(cfg.seed, run.iteration))
            # A corpus smaller than the steps need is cycled.
            history = run_rl(itertools.cycle(picked), sampler=sampler, scorer=scorer, trainer=trainer,
                             cfg=cfg, work_dir=out / "rl", on_step=log_step)
            trainer.close()
            del trainer
            release_cuda_memory()  # q's trainer (weights, grads, Adam) leaves the GPU to the engines
            q_dir = out / "rl" / "q"
            shutil.rmtree(q_dir, ignore_errors=True)
            last = sorted((out / "rl").glob("q_step*"), key=lambda p: int(p.name[len("q_step"):]))
            if last:
                last[-1].rename(q_dir)
            atomic_write_text(history_path, json.dumps(history, indent=1) + "\n")
            seconds["rl"] = time.perf_counter() - t0
        else:
            _wait_for(history_path, run.wait_timeout_s)
            q_dir = out / "rl" / "q"
            sampler = make_engine(str(q_dir)) if q_dir.is_dir() else make_engine(run.model)
    history = json.loads(history_path.read_text(encoding="utf-8")) if history_path.is_file() else []

    from ra3_megatron.data.skips import SkipReport

    t0 = time.perf_counter()
    report = SkipReport()
    snippets = iter_snippets(run.input, scorer.tokenizer, cfg, report=report, **reader_opts)
    result = infuse(snippets, out, sampler=sampler, scorer=scorer, cfg=cfg, rank=run.rank, world=run.world,
                    limit=run.limit, progress=run.progress)
    seconds["infuse"] = time.perf_counter() - t0
    seconds["infuse_parts"] = result["seconds"]  # probe, chain, score, sample, search (batch.run_searches)
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
    }
    write_stats(out, stats)
    if not run.keep_q:
        shutil.rmtree(out / "rl" / "q", ignore_errors=True)
    return stats

