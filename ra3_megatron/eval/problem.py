"""A benchmark problem: what the model sees, and the trusted code that checks its program.

How a sample becomes a program (EvalPlus conventions): a sample's `solution` is the whole
program; a `completion` is appended to `code_prompt` (HumanEval: the function header the model
continued; MBPP with the 3-shot prompt: nothing). `setup` (MBPP's test_setup_code or
test_imports) runs in the sandbox right after the program, as in MBPP's own harness; the names
it defines reach the tests the same way as the program's own (see checker.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Problem:
    task_id: str
    prompt: str  # the text the model continues to write its program
    test: str  # trusted test code: asserts, or a `check(candidate)` function (check_call)
    entry_point: str = ""  # the function the tests call (given to check(); always proxied)
    code_prompt: str = ""  # trusted code a completion continues; also run before the tests
    setup: str = ""  # trusted imports / setup code, run after the program in the sandbox
    check_call: bool = False  # after `test`, call check(<entry point>) (HumanEval style)
    canonical_solution: str = ""  # a whole program known to pass (for self-checks)

    def program(self, *, completion: str | None = None, solution: str | None = None) -> str:
        """The program text for a sample (setup excluded: the checker adds it)."""
        if solution is not None:
            return solution
        if completion is None:
            raise ValueError("a sample needs a completion or a solution")
        return self.code_prompt + completion
