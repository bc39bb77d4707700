"""Bad input on the command line ends in one clear line naming the path and the problem (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ra3_megatron.cli.main import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("backend", ["hf", "vllm", "fake"])
def test_estep_with_a_model_path_that_does_not_exist(tmp_path, capsys, backend):
    missing, out = tmp_path / "no-such-model", tmp_path / "out"
    code = main(["estep", "--model", str(missing), "--input", str(tmp_path), "--output", str(out),
                 "--backend", backend, "--no-progress"])
    assert code == 2
    assert f"{missing}: model directory not found" in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_a_missing_model_never_reaches_the_hub(tmp_path):
    """Without the offline switches, a missing path must still be reported as a path: no repo-id
    lookup, no network (transformers would take "/nonexistent" for a hub id)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    proc = subprocess.run(
        [sys.executable, "-m", "ra3_megatron.cli.main", "eval", "--dataset", "humaneval", "--model", "/nonexistent",
         "--engine", "hf", "--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r.json")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "/nonexistent: model directory not found" in proc.stderr
    assert "Traceback" not in proc.stderr and "huggingface" not in proc.stderr.lower()
