"""Rewards from the sandbox: 1 when a completion's program passes every test of its problem, else 0.

The programs run in the evaluation sandbox (`eval.sandbox`, warm workers kept for the whole run)
and the tests on the trusted side (`eval.checker.check_many`), so a completion cannot fake a pass.
Verdicts are cached per (task, program) for the run: a policy that has converged repeats itself,
and re-running the same program would cost sandbox time for the same answer (tests are assumed
deterministic, as benchmark tests are). "error" verdicts (the checker or a sandbox could not run a
test) are checked again up to `retries` times, then count as failures (reward 0); `verdicts`
counts every status.

    with Verifier(SandboxConfig(), workers=2) as v:
        rewards = v.rewards(tasks, [["    return a + b\\n", ...], ...])   # (P, G) array
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ra3_megatron.eval.prompts import truncate_at_stops
from ra3_megatron.rlvr.problems import Task


class Verifier:
    def __init__(self, config=None, *, workers: int | None = None, cache_size: int = 200_000, retries: int = 2):
        from ra3_megatron.eval.sandbox import SandboxConfig, SandboxPool

        self.config = config or SandboxConfig()
        self.pool = SandboxPool(self.config, size=workers)
        self.cache: dict[tuple[str, str], bool] = {}
        self.cache_size = cache_size
        self.verdicts: Counter[str] = Counter()  # over every program actually run
        self.hits = 0
        self.retries, self.retried = retries, 0

    def rewards(self, tasks: Sequence[Task], completions: Sequence[Sequence[str]]) -> np.ndarray:
        """completions[p][g] (text) for tasks[p] -> rewards (P, G) in {0.0, 1.0}."""
        from ra3_megatron.eval.checker import check_many

        programs = [[t.problem.program(completion=truncate_at_stops(c, t.stop)) for c in group]
                    for t, group in zip(tasks, completions)]
        known: dict[tuple[str, str], bool] = {}
        todo: dict[tuple[str, str], tuple] = {}
        for t, group in zip(tasks, programs):
            for prog in group:
                key = (t.task_id, prog)
                if key in self.cache:
                    self.hits += 1
                    known[key] = self.cache[key]
                elif key not in todo:
                    todo[key] = (t.problem, prog)
        if todo:
            keys = list(todo)
            outcomes = dict(zip(keys, check_many(list(todo.values()), pool=self.pool, progress=False)))
            for _ in range(self.retries):  # "error": the checker or a sandbox failed, not the program
                again = [k for k in keys if outcomes[k].status == "error"]
                if not again:
                    break
                self.retried += len(again)
                outcomes.update(zip(again, check_many([todo[k] for k in again], pool=self.pool, progress=False)))
            for key in keys:
                known[key] = outcomes[key].passed
                self.verdicts[outcomes[key].status] += 1
            if len(self.cache) + len(todo) > self.cache_size:
                self.cache.clear()
            self.cache.update((k, known[k]) for k in todo)
        width = max((len(g) for g in programs), default=0)
        out = np.zeros((len(tasks), width), dtype=np.float64)
        for p, (t, group) in enumerate(zip(tasks, programs)):
            for g, prog in enumerate(group):
                out[p, g] = float(known[(t.task_id, prog)])
        return out

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
