"""The M-step engine trains the RL loss too: forward_logprobs equals transformers' log-probs, and
policy-gradient steps agree across TP=2, PP=2, PP=2 x VPP=2 (interleaved 1F1B) and DP=2 and move
log-probs the advantages' way. One torchrun launch of 2 gloo ranks on a 4-layer tiny Llama
(tests/distributed/workers/engine_rl_worker.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).resolve().parent / "workers" / "engine_rl_worker.py"


@pytest.fixture(scope="module")
def result():
    from ra3_megatron.models.tiny import tiny_model_dir

    model_dir = tiny_model_dir(num_hidden_layers=4)  # 4 layers: 2 virtual stages of 1 layer per rank
    out = Path(tempfile.mkdtemp(prefix="ra3-engine-rl-"))
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(WORKER),
            str(model_dir),
            str(out),
        ]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=400, cwd=Path(__file__).resolve().parents[2]
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        yield json.loads((out / "result.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_forward_logprobs_match_transformers(result):
    import torch

    hf = torch.tensor(result["hf"])
    for layout in ("tp2", "pp2", "pp2_vpp2", "dp2"):
        got = torch.tensor(result[layout]["before"])
        assert got.shape == hf.shape
        assert (got - hf).abs().max().item() < 1e-4, layout


def test_policy_gradient_steps_agree_across_layouts(result):
    ref = result["tp2"]["steps"]
    assert ref[0]["clip frac"] > 0  # the noisy old log-probs make the clip bite
    assert ref[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # on-policy at step 1: pi == pi_ref
    assert ref[-1]["kl"] > 0
    for layout in ("pp2", "pp2_vpp2", "dp2"):
        for a, b in zip(result[layout]["steps"], ref):
            assert a["tokens"] == b["tokens"]
            for key in ("pg loss", "kl", "clip frac", "ratio"):
                assert a[key] == pytest.approx(b[key], abs=1e-5), (layout, key)


def test_policy_gradient_moves_logprobs_with_the_advantage(result):
    import torch

    mask = torch.tensor(result["mask"]).bool()
    adv = result["advantages"]
    before, after = torch.tensor(result["tp2"]["before"]), torch.tensor(result["tp2"]["after"])
    deltas = [(after[row] - before[row])[mask[row]].mean().item() for row in range(len(adv))]
    for row, a in enumerate(adv):  # up for A > 0, down for A < 0
        assert deltas[row] * a > 0, (row, a, deltas)
