"""The checker's verdicts and reasons: tests run on the trusted side against proxied functions."""

from __future__ import annotations

import pytest

from ra3_megatron.eval.checker import check_many
from ra3_megatron.eval.problem import Problem
from ra3_megatron.eval.sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.unit

SQ = Problem(
    task_id="sq", prompt="", entry_point="sq", test="assert sq(2) == 4\nassert sq(-3) == 9\nassert sq(0) == 0"
)
CHECK = Problem(
    task_id="he",
    prompt="def inc(x):\n",
    entry_point="inc",
    code_prompt='def inc(x):\n    """x + 1"""\n',
    check_call=True,
    test="def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n",
)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(timeout_s=3), size=2) as p:
        yield p


def run(pool, *jobs):
    return check_many(list(jobs), pool=pool, progress=False)


def test_verdicts_and_reasons(pool):
    outcomes = run(
        pool,
        (SQ, "def sq(x):\n    return x * x\n"),
        (SQ, "def sq(x):\n    return x * 2\n"),
        (SQ, "def sq(x):\n    return x * x if x else 1 // x\n"),
        (SQ, "def square(x):\n    return x * x\n"),
        (SQ, "def sq(x):\n    assert x > 5, 'too small'\n    return x * x\n"),
        (SQ, "def sq(x)\n    return x\n"),
        (CHECK, CHECK.program(completion="    return x + 1\n")),
        (CHECK, CHECK.program(completion="    return x\n")),
    )
    got = [(o.status, o.reason) for o in outcomes]
    assert got[0] == ("passed", "")
    assert got[1] == ("failed", "assertion failed: assert sq(-3) == 9")
    assert got[2] == ("failed", "the program raised ZeroDivisionError: integer division or modulo by zero "
                                "(program line 2) on: assert sq(0) == 0")  # fmt: skip
    assert got[3] == ("failed", "the program defines no sq")
    assert got[4] == (
        "failed",
        "the program raised AssertionError: too small (program line 2) on: assert sq(2) == 4",
    )
    assert got[5][0] == "failed" and got[5][1].startswith("the program raised SyntaxError")
    assert got[6] == ("passed", "") and got[7] == ("failed", "assertion failed: assert candidate(1) == 2")


def test_tests_see_program_values_and_modules_but_not_its_builtins(pool):
    uses = Problem(
        task_id="u",
        prompt="",
        entry_point="f",
        test="assert f() == LIMIT\nassert math.floor(len('ab') / 2) == 1",
    )
    outcomes = run(
        pool,
        (uses, "import math\nLIMIT = 7\ndef f():\n    return 7\n"),
        (uses, "import math\nLIMIT = 7\nlen = lambda x: 99\ndef f():\n    return 7\n"),  # its len is its own
        (uses, "import fractions as math\nLIMIT = 7\ndef f():\n    return 7\n"),  # an alias is not imported
    )
    assert [o.status for o in outcomes] == ["passed", "passed", "failed"]
    assert "NameError" in outcomes[2].reason


def test_an_argument_that_cannot_be_sent_is_a_checker_error(pool):
    lam = Problem(task_id="l", prompt="", entry_point="apply", test="assert apply(lambda v: v + 1, 1) == 2")
    (outcome,) = run(pool, (lam, "def apply(fn, x):\n    return fn(x)\n"))
    assert outcome.status == "error" and "cannot send" in outcome.reason


def test_a_timeout_swallowed_by_the_tests_still_counts(pool):
    swallow = Problem(
        task_id="s",
        prompt="",
        entry_point="f",
        test="try:\n    f()\nexcept Exception:\n    pass\nassert True",
    )
    (outcome,) = run(pool, (swallow, "def f():\n    while True:\n        pass\n"))
    assert outcome.status == "timed_out"
