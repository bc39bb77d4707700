"""The tiny Llama after a short next-token warm-up on standard-library code, built once and cached.

A randomly initialised model never ends a `# thought` line, so the E-step finds nothing to do;
150 NTP steps on stdlib packages other than the demo's corpus (~1 minute on 2 cores, through the
real `ra3 prepare` + `ra3 mstep`) give a model that writes code-shaped lines and comments.

    python -m ra3_megatron.models.warm       # prints the cached checkpoint dir
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ra3_megatron.errors import RA3Error
from ra3_megatron.models.cache import cached_dir
from ra3_megatron.models.tiny import tiny_model_dir

WARMUP_PACKAGES = ("asyncio", "logging", "importlib", "unittest", "multiprocessing", "http", "email")


def _ra3(*args: str) -> None:
    cmd = [sys.executable, "-m", "ra3_megatron.cli.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise RA3Error(f"warm-up step failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def _build(out: Path, steps: int, lr: float) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for pkg in WARMUP_PACKAGES:
            for f in sorted((stdlib / pkg).glob("*.py")):
                shutil.copyfile(f, src / f"{pkg}__{f.name}")
        base = str(tiny_model_dir())
        print(f"warming up the tiny model: {steps} NTP steps on {len(list(src.iterdir()))} stdlib files "
              "(once; cached)", file=sys.stderr, flush=True)
        _ra3("prepare", "--input", str(src), "--tokenizer", base, "--output", f"{tmp}/data/train",
             "--max-tokens", "1024", "--no-progress")
        _ra3("mstep", "--model", base, "--data", f"{tmp}/data/train", "--out", f"{tmp}/run",
             f"steps={steps}", "micro_batch_size=4", "global_batch_size=8", "seq_length=256", f"lr={lr}",
             "warmup_steps=10", "log_interval=50", "split=100,0,0")
        for f in Path(tmp, "run", "hf").iterdir():
            shutil.copy2(f, out / f.name)


def tiny_warm_model_dir(steps: int = 150, lr: float = 2e-3) -> Path:
    return cached_dir(f"tiny-warm-{steps}-{lr:g}-{tiny_model_dir().name}", lambda out: _build(out, steps, lr))


EMBEDDED = {"tiny": tiny_model_dir, "tiny-warm": tiny_warm_model_dir}


def resolve_model(spec: str) -> str:
    """An embedded model name (tiny, tiny-warm, smollm2) -> its cached dir; any other spec unchanged."""
    if spec == "smollm2":
        from ra3_megatron.models.smollm2 import smollm2_dir

        return str(smollm2_dir())
    return str(EMBEDDED[spec]()) if spec in EMBEDDED else spec


if __name__ == "__main__":
    print(tiny_warm_model_dir())
