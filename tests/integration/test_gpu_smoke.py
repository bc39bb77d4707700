"""tools/gpu_smoke.py, the first command on a GPU machine, kept working on CPU.

Without CUDA its GPU-only checks report SKIP; with --cpu-stand-in the M-step, E-step and GRPO
checks run the same `ra3` commands on CPU (local spec, float32, the transformers backend) and the
script reads their outputs the way it does on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu_smoke.py"


def test_gpu_smoke_runs_its_cpu_checks_and_skips_the_gpu_ones(tmp_path, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU the smoke script is run for real, not as a test")
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--cpu-stand-in", "--steps", "2",
         "--out", str(tmp_path / "work"), "--json", str(results), "--timeout", "300"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_name = {r["name"]: r for r in json.loads(results.read_text())}
    assert {n: r["status"] for n, r in by_name.items()} == {
        "environment": "PASS", "prepare": "PASS", "mstep-bf16": "PASS", "mstep-fp8": "SKIP",
        "vllm-engine": "SKIP", "estep": "PASS", "grpo": "PASS",
    }
    assert by_name["mstep-fp8"]["detail"] == "no CUDA"
    assert by_name["mstep-bf16"]["figures"]["tokens_per_s"] > 0
    assert by_name["estep"]["figures"]["snippets"] == 8
    assert by_name["grpo"]["figures"]["steps"] == 2  # step 0 (no held-out set: an empty record), then step 1
    assert "PASS  environment" in proc.stdout and "SKIP  vllm-engine" in proc.stdout


def test_gpu_smoke_refuses_an_unknown_check():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "environment,warp-drive"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown checks ['warp-drive']" in proc.stderr
