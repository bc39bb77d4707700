"""The pluggable EM phases: prepare (E-step output -> indexed dataset) and the M-step.

A phase is a function; `resolve_phase(kind, spec)` turns a spec into one:
- prepare, "ra3": `ra3 prepare --input ESTEP_DIR --output OUT/train --tokenizer MODEL [args]` in-process.
  Signature: `prepare(*, estep_dir, out_dir, model, args) -> dataset prefix (str)`.
- mstep, "ra3": `ra3 mstep --model INIT --data PREFIX --out OUT [args]` as a subprocess
  (`torchrun --nproc-per-node N` when nproc > 1), so Megatron's process groups live and die with
  it; "inprocess": `megatron.trainer.run_mstep` in this process (one rank).
  When the EM loop itself runs as a torchrun job, both mean `run_mstep` in-process on every rank
  of the job (`mstep_job`), its process group shared with the E-step's trainer and engines.
  Signature: `mstep(*, data, model, out_dir, nproc, args, iteration) -> HF dir of the new model`.
- any "package.module:function" with the same signature (tests use a fake M-step this way).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError, RA3Error


def prepare_ra3(*, estep_dir: Path, out_dir: Path, model: str, args: Sequence[str] = ()) -> str:
    from ra3_megatron.cli.main import main

    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "train"
    argv = ["prepare", "--input", str(estep_dir), "--output", str(prefix), "--tokenizer", str(model), *args]
    rc = main(argv)
    if rc:
        raise RA3Error(f"ra3 {' '.join(argv)} failed with exit status {rc}")
    return str(prefix)


def mstep_ra3(*, data: str, model: str, out_dir: Path, nproc: int = 1, args: Sequence[str] = (),
              iteration: int = 0) -> Path:
    cmd = ["--model", str(model), "--data", str(data), "--out", str(out_dir), *args]
    if nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "ra3_megatron.cli.main", "mstep", *cmd]
    else:
        argv = [sys.executable, "-m", "ra3_megatron.cli.main", "mstep", *cmd]
    rc = subprocess.call(argv, env=dict(os.environ))
    if rc:
        raise RA3Error(f"M-step failed with exit status {rc}: {' '.join(argv)}")
    return _hf_dir(out_dir)


def mstep_inprocess(*, data: str, model: str, out_dir: Path, nproc: int = 1, args: Sequence[str] = (),
                    iteration: int = 0) -> Path:
    """One-rank M-step in this process; `args` are MStepConfig fields as key=value."""
    from ra3_megatron.megatron.parallel import destroy_distributed
    from ra3_megatron.megatron.trainer import MStepConfig, run_mstep

    if nproc != 1:
        raise ConfigError("the in-process M-step runs on one rank; use mstep='ra3' for nproc > 1")
    try:
        run_mstep(MStepConfig(model=str(model), data=str(data), out=str(out_dir), **mstep_overrides(args)))
    finally:
        destroy_distributed()
    return _hf_dir(out_dir)


def mstep_job(*, data: str, model: str, out_dir: Path, nproc: int = 1, args: Sequence[str] = (),
              iteration: int = 0) -> Path:
    """The M-step on every rank of the running torchrun job, in-process (a collective); `args` are
    MStepConfig fields as key=value (tp=2, pp=2 shard it over the job's ranks). The job's process
    group outlives it (the next round's E-step gathers over it)."""
    from ra3_megatron.megatron.trainer import MStepConfig, run_mstep

    if nproc != 1:
        raise ConfigError("under torchrun the M-step runs over the job's ranks: leave --nproc at 1")
    run_mstep(MStepConfig(model=str(model), data=str(data), out=str(out_dir), **mstep_overrides(args)))
    return _hf_dir(out_dir)


def mstep_overrides(args: Sequence[str]) -> dict[str, Any]:
    """MStepConfig fields from M-step options written KEY=VALUE or --KEY=VALUE (later ones win)."""
    import dataclasses

    from ra3_megatron.cli.mstep import parse_value
    from ra3_megatron.megatron.trainer import MStepConfig

    known = {f.name: f for f in dataclasses.fields(MStepConfig)}
    values: dict[str, Any] = {}
    for item in args:
        key, sep, text = item.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or key not in known:
            raise ConfigError(f"M-step options are KEY=VALUE with an MStepConfig field, got {item!r}")
        values[key] = parse_value(key, text, known[key].type)
    return values


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
