"""RLVR problem sets: MBPP's train / validation split, a user jsonl of prompts with tests, a planted task.

A `Task` is an evaluation `Problem` (`eval.problem`: prompt, trusted test code, how a completion
becomes a program) plus the stop sequences its completions are sampled with.

User jsonl, one problem per line:
    {"prompt": "def add(a, b):\\n", "tests": ["assert add(1, 2) == 3"],
     "task_id": "add" (optional, default "line-N"), "entry_point": "add" (optional),
     "setup": "import math" (optional), "code_prompt": "..." (optional, default: the prompt, i.e.
     the program is prompt + completion; give "" when the completion is the whole program),
     "stop": ["\\ndef "] (optional, default: the HumanEval stops)}
`tests` is a list of assert statements or one string of test code. Records in the evaluation's
problem-file formats (HumanEval `test` + `entry_point`, MBPP+ `assertion`, MBPP `test_list`) are
read as `eval.benchmarks` reads them. A bad line is an InputError naming the file, line and problem.

    load_tasks("mbpp-train")             # MBPP task_ids 601-974, 3-shot prompt, stop at [DONE]
    load_tasks("problems.jsonl")
    planted_tasks(8)                     # the tiny-model learning test's task (see its docstring)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ra3_megatron.errors import ConfigError, InputError
from ra3_megatron.eval.problem import Problem
from ra3_megatron.eval.prompts import EVALPLUS_MBPP_STOPS, HUMANEVAL_STOPS

MBPP_SPLITS = {"train": (601, 974), "validation": (511, 600), "test": (11, 510)}


@dataclass(frozen=True)
class Task:
    problem: Problem
    stop: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        return self.problem.prompt

    @property
    def task_id(self) -> str:
        return self.problem.task_id


def _str_field(path, lineno: int, row: dict, key: str, *, required: bool = False, default: str = "") -> str:
    value = row.get(key, None)
    if value is None:
        if required:
            raise InputError(path, f'missing field "{key}"', lineno)
        return default
    if not isinstance(value, str):
        raise InputError(path, f'field "{key}" must be a string, got {type(value).__name__}', lineno)
    return value


def _task_from_row(path, lineno: int, row) -> Task:
    if not isinstance(row, dict):
        raise InputError(path, f"expected a JSON object, got {type(row).__name__}", lineno)
    if "tests" not in row and any(k in row for k in ("test", "assertion", "test_list")):
        from ra3_megatron.eval.benchmarks import problem_from_record

        problem = problem_from_record(row, path, lineno)  # HumanEval(+) / MBPP(+) records
        return Task(problem, HUMANEVAL_STOPS if problem.check_call else EVALPLUS_MBPP_STOPS)
    prompt = _str_field(path, lineno, row, "prompt", required=True)
    if not prompt.strip():
        raise InputError(path, 'field "prompt" is empty', lineno)
    tests = row.get("tests")
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests):
        test = "\n".join(t.rstrip() for t in tests)
    elif isinstance(tests, str):
        test = tests
    else:
        raise InputError(path, 'field "tests" must be a list of strings or a string of test code', lineno)
    if not test.strip():
        raise InputError(path, 'field "tests" is empty: a problem without tests rewards nothing', lineno)
    try:
        compile(test, f"{path}:{lineno}:tests", "exec")
    except SyntaxError as exc:
        raise InputError(path, f'field "tests" is not valid Python: {exc.msg} (test line {exc.lineno})', lineno) from None
    stop = row.get("stop", list(HUMANEVAL_STOPS))
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InputError(path, 'field "stop" must be a list of non-empty strings', lineno)
    problem = Problem(
        task_id=_str_field(path, lineno, row, "task_id", default=f"line-{lineno}"),
        prompt=prompt,
        test=test,
        entry_point=_str_field(path, lineno, row, "entry_point"),
        code_prompt=_str_field(path, lineno, row, "code_prompt", default=prompt),
        setup=_str_field(path, lineno, row, "setup"),
    )
    return Task(problem, tuple(stop))


def load_jsonl(path: str | os.PathLike) -> list[Task]:
    """Tasks of a user jsonl (see the module docstring; `.gz` too); blank lines are skipped."""
    from ra3_megatron.eval.benchmarks import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "problem file not found")
    tasks, seen = [], {}
    for lineno, row in read_jsonl(path):
        task = _task_from_row(path, lineno, row)
        if task.task_id in seen:
            raise InputError(path, f"duplicate task_id {task.task_id!r} (first on line {seen[task.task_id]})", lineno)
        seen[task.task_id] = lineno
        tasks.append(task)
    if not tasks:
        raise InputError(path, "no problems in the file")
    return tasks


def load_mbpp(split: str = "train", mbpp_dir: str | os.PathLike | None = None, *, prompt: str = "3shot") -> list[Task]:
    """MBPP problems of one split (train 601-974, validation 511-600, test 11-510).

    prompt "3shot": the standard few-shot prompt (tasks 2-4 as examples), the completion is the
    whole program, stop at [DONE]; "evalplus": a docstring prompt the program continues.
    The directory: `mbpp_dir`, else env RA3_MBPP_DIR, else the packaged copy (`eval.benchmarks`).
    """
    from dataclasses import replace

    from ra3_megatron.eval import prompts
    from ra3_megatron.eval.benchmarks import problem_from_record, read_jsonl, resolve_mbpp_dir

    if split not in MBPP_SPLITS:
        raise ConfigError(f"unknown MBPP split {split!r}; known: {', '.join(MBPP_SPLITS)}")
    if prompt not in ("3shot", "evalplus"):
        raise ConfigError(f"MBPP prompt must be 3shot or evalplus, not {prompt!r}")
    path = resolve_mbpp_dir(mbpp_dir) / "mbpp.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    rows = list(read_jsonl(path))
    by_id = {int(r["task_id"]): r for _, r in rows}
    shots = [(by_id[i]["text"], by_id[i]["test_list"], by_id[i]["code"].replace("\r\n", "\n"))
             for i in prompts.MBPP_SHOT_IDS]
    lo, hi = MBPP_SPLITS[split]
    tasks = []
    for line, rec in rows:
        if lo <= int(rec["task_id"]) <= hi:
            problem = problem_from_record(rec, path, line)  # the evalplus-style prompt
            if prompt == "3shot":
                problem = replace(problem, prompt=prompts.mbpp_3shot_prompt(shots, rec["text"], rec["test_list"]),
                                  code_prompt="")
                tasks.append(Task(problem, prompts.MBPP_3SHOT_STOPS))
            else:
                tasks.append(Task(problem, prompts.EVALPLUS_MBPP_STOPS))
    return tasks


def load_tasks(spec: str, *, mbpp_dir: str | os.PathLike | None = None, mbpp_prompt: str = "3shot") -> list[Task]:
    """"mbpp-train" / "mbpp-validation" / "mbpp-test", "planted", or a jsonl path."""
    if spec.startswith("mbpp-"):
        return load_mbpp(spec[len("mbpp-"):], mbpp_dir, prompt=mbpp_prompt)
    if spec == "planted":
        return planted_tasks(8)
    if spec.startswith("planted-heldout"):
        return planted_tasks(4, offset=100)
    return load_jsonl(spec)


def planted_tasks(n: int, offset: int = 0) -> list[Task]:
    """An easy task a tiny random-init model learns by GRPO within a few dozen steps.

    Each problem is a function header ending in `return`; the completion (a line or less; the
    test uses one token) is the returned expression, and the test asserts that the function
    returns a plain value other than None: a literal (` 0`, ` True`, ` 'x'`) passes; nothing,
    whitespace, a comment, a name or broken syntax fails. Roughly 1-2% of a random tiny model's
    single tokens pass (its greedy token, 16 spaces, does not), so groups of 16 carry signal
    from the first steps and GRPO can push the policy toward the literal tokens. Distinct names
    per problem; held-out problems use other names (offset).
    """
    tasks = []
    for k in range(offset, offset + n):
        name = f"value_{k}"
        prompt = f"def {name}():\n    return"
        problem = Problem(task_id=f"planted/{k}", prompt=prompt, code_prompt=prompt, entry_point=name,
                          test=f"assert {name}() is not None\n")
        tasks.append(Task(problem, ("\n",)))
    return tasks


def task_ids(tasks: Sequence[Task]) -> list[str]:
    return [t.task_id for t in tasks]
