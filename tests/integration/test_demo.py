"""`ra3 demo` (what `make demo` runs), cut down: one EM round, two HumanEval problems.

The recipe path builds its engines from a namespace of its own, not from `ra3 estep`'s flags:
only an end-to-end run catches a flag the engine factory reads and the recipe does not set.
"""

from __future__ import annotations

import json

import pytest

from ra3_megatron.cli.main import main

pytestmark = pytest.mark.integration


def test_demo_runs_one_round_end_to_end(tmp_path):
    run_dir = tmp_path / "demo"
    argv = ["demo", "--run-dir", str(run_dir), "--eval-problems", "2", "em.iterations=1",
            "em.estep.rl_steps=1"]
    assert main(argv) == 0
    report = (run_dir / "report.md").read_text()
    assert "| 1 |" in report and "| 2 |" not in report
    stats = json.loads((run_dir / "iter_1" / "estep" / "stats.json").read_text())
    assert stats["infusion"]["summary"]["rollout_share"] > 0 and len(stats["rl"]) == 1
    assert stats["rl"][0]["row_layout"] == "tree"  # RL in Megatron-Core, local attention on CPU
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert (results["dataset"], results["tasks_checked"], results["samples_checked"]) == ("humaneval", 2, 2)
