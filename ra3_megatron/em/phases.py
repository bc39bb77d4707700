"""The pluggable EM phases: prepare (E-step output -> indexed dataset) and the M-step.

A phase is a function of its typed config, which the EM loop completes each round (the paths);
`resolve_phase(kind, spec)` turns a runner spec into one:
- prepare, "ra3": `data.prepare.prepare(cfg)` in-process.
  Signature: `prepare(cfg: PrepareConfig) -> dataset prefix (str)`.
- mstep, "ra3": `ra3 mstep --config FILE` as a subprocess (`torchrun --nproc-per-node N` when
  nproc > 1), so Megatron's process groups live and die with it; "inprocess":
  `megatron.trainer.run_mstep` in this process (one rank). When the EM loop itself runs as a
  torchrun job, both mean `run_mstep` in-process on every rank of the job (`mstep_job`), its
  process group shared with the E-step's trainer and engines.
  Signature: `mstep(cfg: MStepConfig, *, nproc: int, iteration: int) -> HF dir of the new model`.
- any "package.module:function" with the same signature (tests use a fake M-step this way).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ra3_megatron.errors import ConfigError, RA3Error

if TYPE_CHECKING:
    from ra3_megatron.data.prepare import PrepareConfig
    from ra3_megatron.megatron.trainer import MStepConfig


def prepare_ra3(cfg: PrepareConfig) -> str:
    from ra3_megatron.data.prepare import format_summary, prepare

    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    print(format_summary(prepare(cfg)))
    return cfg.output


def mstep_ra3(cfg: MStepConfig, *, nproc: int = 1, iteration: int = 0) -> Path:
    from ra3_megatron.megatron.trainer import save_mstep_config

    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = save_mstep_config(cfg, out_dir / "mstep_request.json")
    cmd = ["-m", "ra3_megatron.cli.main", "mstep", "--config", str(config)]
    if nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *cmd]
    else:
        argv = [sys.executable, *cmd]
    rc = subprocess.call(argv, env=dict(os.environ))
    if rc:
        raise RA3Error(f"M-step failed with exit status {rc}: {' '.join(argv)}")
    return _hf_dir(out_dir)


def mstep_inprocess(cfg: MStepConfig, *, nproc: int = 1, iteration: int = 0) -> Path:
    """One-rank M-step in this process."""
    from ra3_megatron.megatron.parallel import destroy_distributed
    from ra3_megatron.megatron.trainer import run_mstep

    if nproc != 1:
        raise ConfigError("the in-process M-step runs on one rank; use the 'ra3' M-step runner for nproc > 1")
    try:
        run_mstep(cfg)
    finally:
        destroy_distributed()
    return _hf_dir(Path(cfg.out))


def mstep_job(cfg: MStepConfig, *, nproc: int = 1, iteration: int = 0) -> Path:
    """The M-step on every rank of the running torchrun job, in-process (a collective); cfg.tp and
    cfg.pp shard it over the job's ranks. The job's process group outlives it (the next round's
    E-step gathers over it)."""
    from ra3_megatron.megatron.trainer import run_mstep

    if nproc != 1:
        raise ConfigError("under torchrun the M-step runs over the job's ranks: leave --nproc at 1")
    run_mstep(cfg)
    return _hf_dir(Path(cfg.out))


def _hf_dir(out_dir: Path) -> Path:
    hf = Path(out_dir) / "hf"
    if not (hf / "config.json").is_file():
        raise RA3Error(f"the M-step left no HF export at {hf}")
    return hf


_BUILTIN: dict[str, dict[str, Callable[..., Any]]] = {
    "prepare": {"ra3": prepare_ra3},
    "mstep": {"ra3": mstep_ra3, "inprocess": mstep_inprocess},
}


def resolve_phase(kind: str, spec: str, *, job_wide: bool = False) -> Callable[..., Any]:
    """The phase function for a spec; `job_wide`: the EM loop runs as a torchrun job, so the
    built-in M-steps run in-process over its ranks."""
    if job_wide and kind == "mstep" and spec in ("ra3", "inprocess"):
        return mstep_job
    if spec in _BUILTIN[kind]:
        return _BUILTIN[kind][spec]
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(f"{kind} phase {spec!r}: expected one of {sorted(_BUILTIN[kind])} or 'module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind} phase {spec!r} cannot be loaded: {exc}") from None


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table of the per-round metrics (E-step figures, M-step losses when present)."""
    if not rows:
        return ["(no finished rounds)"]
    keys = ["estep_think_rate", "estep_mean_thought_tokens", "estep_mean_gain", "estep_rollout_share",
            "estep_reward"]
    keys += sorted({k for r in rows for k in r if k.startswith("mstep_") and ("loss" in k or "ce" in k)})
    out = ["| round | " + " | ".join(k.replace("estep_", "").replace("mstep_", "M ") for k in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), int | float) else "-" for k in keys]
        out.append(f"| {r['iteration']} | " + " | ".join(cells) + " |")
    return out
