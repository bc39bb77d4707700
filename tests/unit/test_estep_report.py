"""The E-step's report.md renders every RL step, also one that sampled no thought (no loss)."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.stats import render_report

pytestmark = pytest.mark.unit


def test_a_step_that_trained_nothing_shows_no_loss():
    trained = {"step": 0, "think_rate": 0.0, "reward": 0.0, "loss": 1.011, "kl": 0.0}
    empty = {"step": 1, "think_rate": 0.0, "reward": 0.0}  # no thought sampled: no update, no loss
    report = render_report({"config": {"penalty": 0.05}, "rl": [trained, empty],
                            "infusion": {"summary": {}, "counts": {}}})
    rows = [line for line in report.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert "| step | think_rate | reward | loss | kl |" in report
    assert rows == ["| 0 | 0 | 0 | 1.011 | 0 |", "| 1 | 0 | 0 | - | - |"]
    # ... also when the first step is the empty one (the columns come from every step)
    assert "| 0 | 0 | 0 | - | - |" in render_report({"rl": [{**empty, "step": 0}, {**trained, "step": 1}],
                                                     "infusion": {"summary": {}, "counts": {}}})
