"""Every benchmark's canonical solutions pass in the real sandbox; empty or wrong ones fail.

MBPP runs need `../shared/data/mbpp` (relative to the repository root) or RA3_MBPP_DIR; they
skip without it. MBPP task 123's canonical solution takes ~3 s alone, hence the long timeout.
"""

from __future__ import annotations

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.eval.benchmarks import load_humaneval, load_mbpp, resolve_mbpp_dir
from ra3_megatron.eval.checker import check_many
from ra3_megatron.eval.sandbox import SandboxConfig

pytestmark = pytest.mark.integration


def failures(jobs, timeout_s: float = 10.0):
    outcomes = check_many(jobs, SandboxConfig(timeout_s=timeout_s), workers=2, progress=False)
    return outcomes, [(p.task_id, o.status, o.reason) for (p, _), o in zip(jobs, outcomes) if not o.passed]


def mbpp_dir():
    try:
        return resolve_mbpp_dir()
    except ConfigError:
        pytest.skip("MBPP data not found (../shared/data/mbpp or RA3_MBPP_DIR)")


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


@pytest.mark.parametrize(("sanitized", "count"), [(False, 500), (True, 257)], ids=["full", "sanitized"])
def test_all_mbpp_test_split_canonical_solutions_pass(sanitized, count):
    problems = list(load_mbpp(mbpp_dir(), sanitized=sanitized).problems.values())
    assert len(problems) == count
    _, bad = failures([(p, p.canonical_solution) for p in problems], timeout_s=60.0)
    assert bad == []
    outcomes, _ = failures([(p, "def unrelated():\n    return None\n") for p in problems[:60]], timeout_s=5.0)
    assert not any(o.passed for o in outcomes)
