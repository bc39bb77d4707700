"""The EM driver: `iterations` rounds of E-step -> prepare -> M-step in one run directory.

    RUN/state.json                   {"completed": ["iter_1/estep", ...], "models": {...}, "config": ...}
    RUN/iter_k/estep/                E-step output (shards + manifest + stats.json + report.md)
    RUN/iter_k/data/                 `ra3 prepare` output (the Megatron indexed dataset)
    RUN/iter_k/mstep/                M-step run dir; its HF export is iteration k's model
    RUN/iter_k/report.md             a short report of the round
    RUN/metrics/em.jsonl             one line per finished round
    RUN/report.md                    the run-level report

Phases run in order and are marked done in state.json (written atomically) when they finish;
a rerun skips the finished ones and restarts at the one where it stopped: the E-step resumes from
its completed shards, prepare and the M-step restart in a clean directory. pi of round k is the
model of round k-1 (the input model for k = 1); the M-step starts from it (`init="previous"`) or
from the input model (`init="base"`).

The prepare and M-step phases take typed configs (`EMConfig.prepare`, `EMConfig.mstep`, their
paths filled each round) and are pluggable (`em.phases`): the default runs the prepare pipeline
in-process and `ra3 mstep --config FILE` as a subprocess (torchrun when nproc > 1); tests and dry
runs pass any `module:function` runner with the same signature.

As one torchrun job (`job` over the ranks of the default process group) every phase runs over
all ranks: the E-step with RL on every rank and the infusion sharded, the M-step in-process on
every rank (`em.phases.mstep_job`); prepare and the reports run on the first rank while the
others wait for its mark in state.json (a poll, not a collective: prepare may outlast a process
group's timeout). The first rank writes state.json; every rank keeps the same copy in memory, and
the ranks meet at a barrier after each phase, so a rerun after any rank died resumes consistently.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ra3_megatron.data.prepare import PREPARE_PATHS, PrepareConfig
from ra3_megatron.em.phases import resolve_phase, summary_table
from ra3_megatron.errors import ConfigError, RA3Error
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.run import EStepRun, run_estep
from ra3_megatron.estep.stats import atomic_write_text
from ra3_megatron.megatron.trainer import MSTEP_PATHS, MStepConfig
from ra3_megatron.rl.job import Job
from ra3_megatron.rollout.pool import EnginePool

PHASES = ("estep", "data", "mstep", "report")
MAIN_ONLY = ("data", "report")  # phases the first rank runs alone while the others wait
FIRST_RANK_WAIT_S = 48 * 3600.0


@dataclass(kw_only=True)
class EMConfig:
    model: str
    input: str
    run_dir: str
    iterations: int = 2
    init: str = "previous"  # M-step initialisation: "previous" round's model or the "base" model
    estep: EStepConfig = field(default_factory=EStepConfig)
    # The other two phases' configs; the loop fills their paths (PREPARE_PATHS, MSTEP_PATHS) each round.
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    mstep: MStepConfig = field(default_factory=MStepConfig)
    prepare_runner: str = "ra3"  # "ra3" or "module:function" (see em.phases)
    mstep_runner: str = "ra3"  # "ra3", "inprocess" or "module:function"
    nproc: int = 1  # M-step ranks (torchrun when > 1; leave 1 when the EM loop is a torchrun job)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.init not in ("previous", "base"):
            raise ConfigError(f"init must be 'previous' or 'base', got {self.init!r}")
        for name, paths in (("prepare", PREPARE_PATHS), ("mstep", MSTEP_PATHS)):
            given = [p for p in paths if getattr(getattr(self, name), p)]
            if given:
                raise ConfigError(f"{name}.{given[0]} is set by the EM loop each round; leave it empty")

    def identity(self) -> dict[str, Any]:
        """What must not change when a run resumes (iterations may grow; progress bars may differ)."""
        return {"model": self.model, "input": self.input, "init": self.init, "estep": self.estep.to_dict(),
                "prepare": {k: v for k, v in asdict(self.prepare).items() if k != "progress"},
                "mstep": asdict(self.mstep)}

    def prepare_round(self, *, estep_dir: Path, out_dir: Path, tokenizer: str) -> PrepareConfig:
        return replace(self.prepare, input=str(estep_dir), output=str(out_dir / "train"), tokenizer=str(tokenizer))

    def mstep_round(self, *, data: str, model: str, out_dir: Path) -> MStepConfig:
        return replace(self.mstep, model=str(model), data=str(data), out=str(out_dir))


class EMState:
    def __init__(self, run_dir: Path, identity: dict[str, Any], option: str = "--run-dir", writer: bool = True):
        self.path, self.writer = run_dir / "state.json", writer
        if self.path.is_file():
            self.body = json.loads(self.path.read_text(encoding="utf-8"))
            old = self.body.get("config", {})
            new = json.loads(json.dumps(identity))
            if old != new:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigError(f"{run_dir} holds an EM run with another configuration "
                                  f"({', '.join(changed)} differ); use a new {option} or the same options")
            if writer and self.body.pop("failed", None) is not None:
                self.save()  # a rerun: the others read state.json only after this (run_em's first barrier)
        else:
            self.body = {"version": 1, "config": identity, "completed": [], "models": {}, "data": {},
                         "seconds": {}}
            self.save()

    def done(self, phase: str) -> bool:
        return phase in self.body["completed"]

    @contextlib.contextmanager
    def failure_recorded(self, phase: str, others_wait: bool):
        """A phase the first rank runs alone: if it raises, state.json says so, and the ranks
        waiting for it (`wait_for`) stop with that error instead of waiting on."""
        try:
            yield
        except BaseException as exc:
            if others_wait:
                self.body["failed"] = {"phase": phase, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                self.save()
            raise

    def mark(self, phase: str, seconds: float, **updates: Any) -> None:
        self.body["completed"].append(phase)
        self.body["seconds"][phase] = round(seconds, 3)
        for key, value in updates.items():
            self.body[key].update(value)
        self.save()

    def save(self) -> None:
        if self.writer:  # one writer per run dir (the first rank of a job); the others keep a copy
            atomic_write_text(self.path, json.dumps(self.body, indent=1) + "\n")

    def wait_for(self, phase: str, *, timeout_s: float = FIRST_RANK_WAIT_S, poll_s: float = 1.0) -> None:
        """A rank that is not the writer waits for the first rank to record `phase` (a phase it
        runs alone, such as prepare, may take hours: longer than a collective's timeout), then
        takes the first rank's state. A dead first rank ends the wait sooner: the job's watchdog
        stops every rank (megatron/watchdog.py)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                body = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):  # written atomically: absent or old, never torn
                body = {}
            if phase in body.get("completed", []):
                self.body = body
                return
            failed = body.get("failed") or {}
            if failed.get("phase") == phase:
                raise RA3Error(f"the first rank failed in {phase}: {failed.get('error')}")
            if time.monotonic() > deadline:
                raise RA3Error(f"the first rank did not finish {phase} within {timeout_s:.0f} s ({self.path})")
            time.sleep(poll_s)


def run_em(
    cfg: EMConfig,
    *,
    make_engine: Callable[[str], Any],
    make_trainer: Callable[[str], Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    job: Job | None = None,
) -> dict[str, Any]:
    """Run or resume the EM loop; returns the final state (completed phases, models per round).
    With a `job` of several ranks every rank calls this (see the module docstring)."""
    job = job or Job()
    run_dir = Path(cfg.run_dir)
    if job.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = EMState(run_dir, cfg.identity())
        (run_dir / "metrics").mkdir(exist_ok=True)
    job.barrier()  # the others read what the first rank checked and wrote
    if not job.is_main:
        state = EMState(run_dir, cfg.identity(), writer=False)
    prepare = resolve_phase("prepare", cfg.prepare_runner)
    mstep = resolve_phase("mstep", cfg.mstep_runner, job_wide=job.world > 1)
    # pi's and q's engines live across rounds: a later round reloads weights instead of starting
    # engines again; they sleep while the M-step trains.
    pool = EnginePool(make_engine)
    try:
        _run_rounds(cfg, state, run_dir, pool, make_trainer, prepare, mstep, log if job.is_main else _quiet,
                    progress, job)
    finally:
        pool.shutdown()
    state.body["engines"] = {"started": pool.started, "reloaded": pool.reloads}  # this invocation's
    state.save()
    if job.is_main:
        _write_run_report(run_dir, state, cfg)
    return state.body


def _quiet(message: str) -> None:
    pass


def _run_rounds(cfg, state, run_dir, pool, make_trainer, prepare, mstep, log, progress, job: Job) -> None:
    for k in range(1, cfg.iterations + 1):
        it = run_dir / f"iter_{k}"
        pi = cfg.model if k == 1 else state.body["models"][f"iter_{k - 1}"]
        for phase in PHASES:
            name = f"iter_{k}/{phase}"
            if state.done(name):
                continue
            log(f"[em] {name} ...")
            t0 = time.perf_counter()
            updates: dict[str, Any] = {}
            if phase == "estep":
                trainer = (lambda pi=pi: make_trainer(pi)) if make_trainer is not None else None
                run_estep(EStepRun(model=pi, input=cfg.input, output=str(it / "estep"), iteration=k,
                                   progress=progress, rank=job.rank, world=job.world,
                                   rl_ranks="all" if job.world > 1 else "first"),
                          cfg.estep, make_engine=pool.acquire, make_trainer=trainer)
            elif phase in MAIN_ONLY and not job.is_main:
                state.wait_for(name)  # no collective: prepare may outlast the process group's timeout
                job.barrier()
                continue
            elif phase == "data":
                shutil.rmtree(it / "data", ignore_errors=True)
                with state.failure_recorded(name, job.world > 1):
                    prefix = str(prepare(cfg.prepare_round(estep_dir=it / "estep", out_dir=it / "data",
                                                           tokenizer=pi)))
                updates = {"data": {f"iter_{k}": prefix}}
            elif phase == "mstep":
                pool.sleep_idle()
                if job.is_main:
                    shutil.rmtree(it / "mstep", ignore_errors=True)
                job.barrier()  # no rank writes into the M-step dir before it is clean
                init = pi if cfg.init == "previous" else cfg.model
                hf_dir = mstep(cfg.mstep_round(data=state.body["data"][f"iter_{k}"], model=init,
                                               out_dir=it / "mstep"), nproc=cfg.nproc, iteration=k)
                updates = {"models": {f"iter_{k}": str(hf_dir)}}
            else:
                with state.failure_recorded(name, job.world > 1):
                    _write_reports(run_dir, state, k)
            if phase not in MAIN_ONLY:
                job.barrier()  # every rank finished the phase (an E-step's last shard, the M-step's export)
            state.mark(name, time.perf_counter() - t0, **updates)
            if phase in MAIN_ONLY:
                job.barrier()  # the others saw the mark (EMState.wait_for) and wait here
            log(f"[em] {name} done in {time.perf_counter() - t0:.1f} s")


def _estep_summary(it: Path) -> dict[str, Any]:
    stats = json.loads((it / "estep" / "stats.json").read_text(encoding="utf-8"))
    return stats


def _mstep_metrics(it: Path) -> dict[str, Any]:
    """The M-step's last metrics record, whatever runner wrote it (metrics.jsonl lines), else {}.

    Thoughts are rare, so the last step's batch often holds no latent token (latent CE NaN): the
    latent CE reported is then the one of the last step that had latent tokens.
    """
    for path in sorted((it / "mstep").rglob("metrics*.jsonl")):
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        if lines:
            last = dict(lines[-1])
            with_latent = [r for r in lines if r.get("latent_tokens")]
            if not last.get("latent_tokens") and with_latent:
                last["latent_ce"] = with_latent[-1].get("latent_ce", last.get("latent_ce"))
                last["latent_ce_step"] = with_latent[-1].get("step")
            return last
    return {}


def _write_reports(run_dir: Path, state: EMState, k: int) -> None:
    it = run_dir / f"iter_{k}"
    estep = _estep_summary(it)
    mstep = _mstep_metrics(it)
    summary = estep["infusion"]["summary"]
    record = {"iteration": k, **{f"estep_{key}": v for key, v in summary.items()},
              "records": estep["infusion"].get("records"),
              **{f"mstep_{key}": v for key, v in mstep.items() if isinstance(v, int | float)},
              "model": state.body["models"].get(f"iter_{k}")}
    lines = [f"# EM round {k}", "", f"model: {record['model']}", "", "## E-step", ""]
    lines += [f"- {key}: {v:.4g}" for key, v in summary.items()]
    rl = estep.get("rl", [])
    if rl:
        lines += ["", "RL reward per step: " + ", ".join(f"{s.get('reward', 0):.4g}" for s in rl)]
    lines += ["", "## M-step", ""]
    lines += [f"- {key}: {v:.4g}" if isinstance(v, float) else f"- {key}: {v}" for key, v in mstep.items()] or ["(no metrics)"]
    atomic_write_text(it / "report.md", "\n".join(lines) + "\n")
    metrics = run_dir / "metrics" / "em.jsonl"
    kept = [x for x in (metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else [])
            if x.strip() and json.loads(x).get("iteration") != k]
    atomic_write_text(metrics, "\n".join([*kept, json.dumps(record)]) + "\n")


def _write_run_report(run_dir: Path, state: EMState, cfg: EMConfig) -> None:
    metrics = run_dir / "metrics" / "em.jsonl"
    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()] if metrics.is_file() else []
    lines = ["# RA3 EM run", "", f"input: {cfg.input}", f"base model: {cfg.model}",
             f"iterations: {cfg.iterations} (c = {cfg.estep.penalty}, G = {cfg.estep.samples}, "
             f"tau = {cfg.estep.horizon}, RL steps = {cfg.estep.rl_steps})", ""]
    lines += summary_table(rows)
    lines += ["", "Phase times (s): " + ", ".join(f"{k} {v}" for k, v in state.body["seconds"].items())]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")


def em_config_dict(cfg: EMConfig) -> dict[str, Any]:
    return asdict(cfg)
