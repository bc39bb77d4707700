"""Every benchmark's canonical solutions pass in the real sandbox; empty or wrong ones fail.

MBPP is the copy shipped inside the package. MBPP task 123's canonical solution takes ~3 s alone, hence the long timeout.
"""

from __future__ import annotations

import pytest

from ra3_megatron.eval.benchmarks import load_humaneval, load_mbpp, resolve_mbpp_dir
from ra3_megatron.eval.checker import check_many
from ra3_megatron.eval.sandbox import SandboxConfig

pytestmark = pytest.mark.integration


def failures(jobs, timeout_s: float = 10.0):
    outcomes = check_many(jobs, SandboxConfig(timeout_s=timeout_s), workers=2, progress=False)
    return outcomes, [(p.task_id, o.status, o.reason) for (p, _), o in zip(jobs, outcomes) if not o.passed]


def test_all_164_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    problems = list(load_humaneval().problems.values())
    assert len(problems) == 164
    _, bad = failures([(p, p.canonical_solution) for p in problems])
    assert bad == []
    wrong = [(p, p.program(completion="")) for p in problems] + [
        (p, p.program(completion="    return 0\n")) for p in problems
    ]
    outcomes, _ = failures(wrong, timeout_s=5.0)
    assert not any(o.passed for o in outcomes)


def test_mbpp_cli_from_an_empty_directory_passes_all_500_canonical_solutions(tmp_path):
    """What a user types after a plain install: the packaged MBPP, any working directory."""
    import json
    import os
    import subprocess
    import sys

    problems = load_mbpp(resolve_mbpp_dir(None)).problems
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "solution": p.canonical_solution}) + "\n"
                               for t, p in problems.items()))
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RA3_MBPP_DIR"}
    proc = subprocess.run(
        [sys.executable, "-m", "ra3_megatron.cli.main", "eval", "--dataset", "mbpp", "--samples", str(samples),
         "--out", "r.json", "--timeout", "60", "--workers", "2", "--k", "1", "--no-progress"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((work / "r.json").read_text())
    assert (results["tasks_checked"], results["tasks_in_dataset"]) == (500, 500)
    assert results["pass_at_k"]["pass@1"] == 1.0, results["outcomes"]


def test_all_257_sanitized_mbpp_canonical_solutions_pass():
    problems = list(load_mbpp(resolve_mbpp_dir(), sanitized=True).problems.values())
    assert len(problems) == 257
    _, bad = failures([(p, p.canonical_solution) for p in problems], timeout_s=60.0)
    assert bad == []


@pytest.mark.parametrize("sanitized", [False, True], ids=["full", "sanitized"])
def test_unrelated_mbpp_solutions_fail(sanitized):
    problems = list(load_mbpp(resolve_mbpp_dir(), sanitized=sanitized).problems.values())[:60]
    outcomes, _ = failures([(p, "def unrelated():\n    return None\n") for p in problems], timeout_s=5.0)
    assert not any(o.passed for o in outcomes)
