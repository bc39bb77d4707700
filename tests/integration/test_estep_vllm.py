"""`ra3 estep` with the vLLM backend and q's RL in Megatron-Core: the layout GPU runs use (vLLM
samples and scores, Megatron-Core trains q, weights synced into the live engine every step),
end to end on CPU. Skips when vLLM is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.integration


def test_estep_vllm_backend_with_rl_in_megatron(tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        body = "\n".join(f"def f{i}_{k}(x):\n    y = x * {k + 1}\n    if y > {i}:\n        y = y - {k}\n    return y\n"
                         for k in range(4))
        (src / f"mod{i}.py").write_text(f'"""Module {i}."""\nimport math\n\n{body}')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ra3_megatron.cli.main", "estep", "--model", str(tiny_model_dir), "--input", str(src),
           "--output", str(out), "--backend", "vllm", "--trainer", "megatron", "--rl-steps", "1",
           "--rl-snippets", "2", "--decision", "force", "--samples", "2", "--penalty", "0.0", "--lr", "1e-3",
           "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    (step,) = stats["rl"]
    assert step["examples"] > 0 and step["row_layout"] == "tree" and step["sync_s"] > 0
    records = [json.loads(x) for p in sorted(Path(out).glob("part-*.jsonl")) for x in p.read_text().splitlines()]
    assert len(records) == len({r["id"] for r in records}) == stats["infusion"]["records"] == 2
    assert {r["text"] for r in records} == {p.read_text() for p in src.iterdir()}
    assert stats["infusion"]["counts"]["rollouts"] > 0  # decision "force": every position was rolled out
    assert set(stats["seconds"]["infuse_parts"]) >= {"sample", "score"}
