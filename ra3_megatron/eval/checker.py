"""Check programs against benchmark tests: the program runs in the sandbox, the tests run here.

For each program a fresh sandboxed child runs the program's top level; the trusted test code
then runs in this process, in a fresh namespace, where every name the tests use that the program
defines is a proxy: calling it runs the program's function in the sandbox and returns plain data
(`wire.py`). So the verdict never depends on anything the program can change: an early
`os._exit(0)` or `sys.exit(0)`, a patched `assert`/builtin/test harness, or an object whose `__eq__`
always answers True (it cannot even be sent back) all fail.

    outcomes = check_many([(problem, program), ...], SandboxConfig(), workers=2)

Verdicts: "passed"; "failed" (with the reason: the assert that failed, the exception the
program raised, how its process ended); "timed_out" (wall or CPU time); "error" (the checker
itself could not run the test, e.g. a test passes an argument that cannot be sent).
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ra3_megatron.eval.problem import Problem
from ra3_megatron.eval.sandbox import SandboxConfig, SandboxPool, SandboxWorker
from ra3_megatron.eval.session import ProgramError, ProgramExited, SandboxTimeout, Session
from ra3_megatron.eval.wire import Ref

# A program's global that is a standard-library module under its own name (`import math`) is
# imported here for the tests; never these (side effects on import).
_NO_IMPORT = frozenset({"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "webbrowser"})
_QUIET_BUILTINS = {**vars(builtins), "print": lambda *a, **k: None}


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" | "failed" | "timed_out" | "error"
    reason: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# CPython < 3.11.8 / 3.12.0 keeps the AST <-> object conversion's recursion depth in global state,
# so concurrent compile()/ast.parse() in the checker's worker threads can fail with "SystemError:
# AST constructor recursion depth mismatch" (python/cpython gh-106905). Parsing is cheap and cached.
_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, filename: str):
    with _PARSE_LOCK:
        return compile(source, filename, "exec")


@functools.lru_cache(maxsize=4096)
def _free_names(source: str) -> frozenset[str]:
    """Names the test code reads but never binds (they come from the program or builtins)."""
    loads, bound = set(), set()
    with _PARSE_LOCK:
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return frozenset(loads - bound)


def _test_line(exc: BaseException, test: str) -> str:
    lines = test.splitlines()
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if frame.f_code.co_filename == "<test>" and 0 < lineno <= len(lines):
            return lines[lineno - 1].strip()
    return ""


def _bind_program_names(session: Session, names: dict[str, str], ns: dict, wanted) -> None:
    for name in wanted:
        kind = names.get(name, "")
        if kind in ("function", "callable", "class"):
            ns[name] = session.proxy(name)
        elif kind.startswith("module:"):  # e.g. tests that use `math` the program imported
            module = kind.partition(":")[2]
            top = module.split(".")[0]
            if name in (module, top) and top in sys.stdlib_module_names and top not in _NO_IMPORT:
                try:
                    ns[name] = importlib.import_module(module)
                except ImportError:
                    pass
        elif kind == "value":
            try:
                ns[name] = session.get(name)
            except ProgramError:  # not plain data: the tests can only pass it back to the program
                ns[name] = Ref(name)


def _run_tests(session: Session, problem: Problem, program: str) -> str:
    """Run the problem's tests against the loaded program; '' when they all pass."""
    source = f"{program}\n{problem.setup}" if problem.setup else program
    try:
        names = session.load(source)
    except ProgramError as exc:
        return f"the program raised {exc}{_at(exc)} while loading"
    ns = {"__name__": "__check__", "__builtins__": _QUIET_BUILTINS}
    exec(_compiled(problem.code_prompt, "<prompt>"), ns)
    _bind_program_names(session, names, ns, _free_names(problem.test) - ns.keys() - _QUIET_BUILTINS.keys())
    if problem.entry_point:
        if problem.entry_point not in names:
            return f"the program defines no {problem.entry_point}"
        ns[problem.entry_point] = session.proxy(problem.entry_point)
    try:
        exec(_compiled(problem.test, "<test>"), ns)
        if problem.check_call:
            ns["check"](ns[problem.entry_point])
    except ProgramError as exc:  # first: a program's AssertionError is not a failed test assert
        where = _test_line(exc, problem.test)
        return f"the program raised {exc}{_at(exc)}" + (f" on: {where}" if where else "")
    except AssertionError as exc:
        return f"assertion failed: {_test_line(exc, problem.test) or exc}"
    return ""


def _at(exc: ProgramError) -> str:
    return f" (program line {exc.line})" if exc.line else ""


def check_program(worker: SandboxWorker, problem: Problem, program: str) -> Outcome:
    start = time.monotonic()
    session = worker.session()
    reason = ""
    try:
        reason = _run_tests(session, problem, program)
    except (SandboxTimeout, ProgramExited):
        pass  # session.state holds it
    except Exception as exc:  # noqa: BLE001 - the test itself broke (or could not send an argument)
        if session.state == "running":
            reason = f"{type(exc).__name__}: {exc}"
    finally:
        exit_info = session.close()
    seconds = time.monotonic() - start
    if session.state == "timeout":
        return Outcome("timed_out", session.detail, seconds)
    if exit_info.get("sandbox_error"):
        return Outcome("error", f"the sandbox stopped responding: {exit_info['sandbox_error']}", seconds)
    if session.state == "exited":
        how = (
            f"exit code {exit_info['exit']}"
            if exit_info.get("exit") is not None
            else f"signal {exit_info.get('signal')}"
        )
        return Outcome("failed", f"{session.detail} ({how})", seconds)
    if reason:
        return Outcome("error" if reason.startswith("TypeError: cannot send") else "failed", reason, seconds)
    return Outcome("passed", "", seconds)


def check_many(
    jobs: Sequence[tuple[Problem, str]],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    pool: SandboxPool | None = None,
    progress: bool = True,
    desc: str = "checking",
) -> list[Outcome]:
    """Check (problem, program) pairs in parallel (one warm sandbox per worker), in input order."""
    from tqdm.auto import tqdm

    own = pool is None
    pool = pool or SandboxPool(config, size=workers or os.cpu_count() or 1)
    pool.start()  # a sandbox that cannot start fails here, not as N "error" outcomes

    def one(job: tuple[Problem, str]) -> Outcome:
        with pool.worker() as w:
            try:
                return check_program(w, *job)
            except Exception as exc:  # noqa: BLE001 - a sandbox failure must not end the whole run
                w.close()
                return Outcome("error", f"checker error: {type(exc).__name__}: {exc}")

    try:
        with (
            ThreadPoolExecutor(pool.size) as ex,
            tqdm(total=len(jobs), desc=desc, disable=not progress) as bar,
        ):
            outcomes = []
            for outcome in ex.map(one, jobs):
                outcomes.append(outcome)
                bar.update(1)
            return outcomes
    finally:
        if own:
            pool.close()
