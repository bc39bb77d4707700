"""Helpers of the M-step distributed tests: a tiny infused dataset and `ra3 mstep` under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ra3_megatron.process import run_process_group

TIMEOUT_S = 300


def write_infused_jsonl(path: Path, n_files: int = 24, chars: int = 5000) -> Path:
    """Stdlib snippets with a thought before every 6th safe line: both token classes present."""
    from ra3_megatron.core.latent import safe_candidate_lines
    from ra3_megatron.models.tiny import stdlib_files

    with path.open("w") as out:
        for k, p in enumerate(stdlib_files(n_files)):
            text = p.read_text(encoding="utf-8")[:chars]
            try:
                lines = safe_candidate_lines(text)
            except (SyntaxError, ValueError):
                lines = []
            thoughts = [{"line": line, "text": f"step {i} of the plan"} for i, line in enumerate(lines[::6])]
            out.write(json.dumps({"id": f"doc{k}", "text": text, "thoughts": thoughts}) + "\n")
    return path


def prepare_dataset(root: Path) -> str:
    from ra3_megatron.data.prepare import PrepareConfig, prepare

    src = write_infused_jsonl(root / "infused.jsonl")
    prefix = root / "data" / "infused"
    prepare(PrepareConfig(input=str(src), tokenizer="tiny", output=str(prefix), workers=1, progress=False))
    return str(prefix)


def torchrun_mstep(
    nproc: int, *args: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`ra3 mstep` under torchrun in its own process group, output to a file.

    A rank killed by SIGKILL leaves dist_checkpointing's writer Manager process orphaned, holding
    any inherited pipe open: so no pipes, and the whole group (only processes started here) is
    killed once torchrun returns.
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "ra3_megatron.cli.main",
        "mstep",
        *args,
    ]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    with tempfile.TemporaryFile("w+") as log:
        rc = run_process_group(cmd, stdout=log, timeout_s=TIMEOUT_S, env=full_env)
        log.seek(0)
        output = log.read()
    if rc is None:
        raise AssertionError(f"torchrun timed out after {TIMEOUT_S} s:\n{output[-6000:]}")
    if check and rc != 0:
        raise AssertionError(f"torchrun failed ({rc}):\n{output[-6000:]}")
    return subprocess.CompletedProcess(cmd, rc, stdout=output, stderr="")


def metrics(run: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {r["step"]: r for r in records}
