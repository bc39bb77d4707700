"""One program's child process in a warm sandbox: load the program, call its functions.

Everything that comes back is untrusted plain data (`wire.py`). Failures reach the calling
(trusted) test code as exceptions: `ProgramError` (the program raised; builtin exception
types keep their class, so tests that expect e.g. ValueError still work), `ProgramExited` (it
died or broke the protocol) and `SandboxTimeout` (the wall-time budget is spent). The first
such failure is also kept in `state`, so test code that swallows exceptions cannot hide it.
"""

from __future__ import annotations

import builtins
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ra3_megatron.eval.wire import decode, encode, recv_msg, send_msg


class ProgramError(Exception):
    """The program raised an exception (type name, message and program line kept)."""

    def __init__(self, type_name: str, message: str, line: int | None = None):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name, self.message, self.line = type_name, message, line


class ProgramExited(Exception):
    """The program's process ended, or sent something that breaks the protocol."""


class SandboxTimeout(Exception):
    """The program used up its wall-time budget."""


_BUILTIN_ERRORS = {
    n: c
    for n, c in vars(builtins).items()
    if isinstance(c, type) and issubclass(c, Exception) and c.__module__ == "builtins"
}
_MIXED: dict[str, type] = {}


def _program_error(err: dict) -> ProgramError:
    name, message, line = str(err.get("type", "?")), str(err.get("message", "")), err.get("line")
    base = _BUILTIN_ERRORS.get(name)
    if base is not None:
        try:
            cls = _MIXED.get(name) or _MIXED.setdefault(name, type(name, (ProgramError, base), {}))
            return cls(name, message, line)
        except TypeError:  # a builtin whose layout does not mix
            pass
    return ProgramError(name, message, line)


SETUP_TIMEOUT_S = 60.0  # for the sandbox's own set-up of a child (trusted code), not the program


class Session:
    def __init__(self, sock, *, budget_s: float, on_close: Callable[[], dict], output=None):
        self._sock, self.budget_s, self._on_close, self._output = sock, budget_s, on_close, output
        self.deadline: float | None = None  # set when the child reports ready
        self.state = "running"  # -> "timeout" | "exited"
        self.detail = ""
        self.exit_info: dict | None = None
        self.names: dict[str, str] = {}

    def _fail(self, state: str, detail: str) -> Exception:
        if self.state == "running":
            self.state, self.detail = state, detail
        return SandboxTimeout(self.detail) if self.state == "timeout" else ProgramExited(self.detail)

    def _await_ready(self) -> None:
        try:
            self._sock.settimeout(SETUP_TIMEOUT_S)
            ready = recv_msg(self._sock)
        except (EOFError, OSError, ValueError) as exc:
            raise self._fail(
                "exited", f"the sandbox could not start the program ({type(exc).__name__})"
            ) from None
        if ready != {"ready": True}:
            raise self._fail("exited", "the sandbox could not start the program")
        self.deadline = time.monotonic() + self.budget_s

    def _request(self, msg: dict) -> dict:
        if self.state != "running":
            raise self._fail(self.state, self.detail)
        if self.deadline is None:
            self._await_ready()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._fail("timeout", "the wall-time limit was reached")
        try:
            self._sock.settimeout(left)
            send_msg(self._sock, msg)
            reply = recv_msg(self._sock)
        except TimeoutError:
            raise self._fail("timeout", "the wall-time limit was reached") from None
        except (EOFError, OSError, ValueError) as exc:
            raise self._fail("exited", f"the program's process ended ({type(exc).__name__})") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise self._fail("exited", "the program broke the result protocol")
        if not reply["ok"]:
            err = reply.get("error")
            raise _program_error(err if isinstance(err, dict) else {})
        return reply

    def _value(self, reply: dict):
        try:
            return decode(reply["value"])
        except Exception:  # noqa: BLE001 - anything malformed is the program's doing
            raise self._fail("exited", "the program sent malformed data") from None

    def load(self, code: str) -> dict[str, str]:
        """Run the program's top level; returns its global names and their kinds."""
        names = self._request({"op": "load", "code": code}).get("names")
        self.names = {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
        return self.names

    def call(self, name: str, *args, **kwargs):
        payload = {"op": "call", "name": name, "args": encode(list(args)), "kwargs": encode(kwargs)}
        return self._value(self._request(payload))

    def wait_exit(self) -> None:
        """Wait (within the budget) until the child closes its end, i.e. has exited."""
        self._sock.settimeout(max(0.001, self.deadline - time.monotonic()))
        try:
            while self._sock.recv(65536):
                pass
        except OSError:
            pass

    def get(self, name: str):
        return self._value(self._request({"op": "get", "name": name}))

    def proxy(self, name: str) -> Callable:
        def call(*args, **kwargs):
            return self.call(name, *args, **kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def close(self) -> dict:
        """End the program (all its processes are killed); returns {"exit", "signal"}."""
        if self.exit_info is None:
            self._sock.close()
            self.exit_info = self._on_close()
            if self.exit_info.get("signal") == signal.SIGXCPU:
                self._fail("timeout", "the CPU-time limit was reached")
        return self.exit_info

    def output(self, limit: int = 65536) -> str:
        """The tail of what the program printed (sessions opened with capture_output)."""
        if self._output is None:
            return ""
        self._output.seek(0, 2)
        self._output.seek(max(0, self._output.tell() - limit))
        return self._output.read().decode("utf-8", errors="replace")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ProgramResult:
    status: str  # "ok" | "error" (it raised) | "timed_out" | "exited" (it ended itself, e.g. os._exit)
    error: str = ""
    output: str = ""  # the tail of its stdout and stderr
    exit_code: int | None = None
    signal: int | None = None
    seconds: float = 0.0


def run_program(worker, code: str) -> ProgramResult:
    """Run a whole program (no tests) in a fresh child of `worker` (a SandboxWorker)."""
    start = time.monotonic()
    status, error = "ok", ""
    with worker.session(script=True, capture_output=True) as s:
        try:
            s.load(code)
            s.wait_exit()
        except ProgramError as exc:
            status, error = "error", f"{exc}" + (f" (line {exc.line})" if exc.line else "")
        except (SandboxTimeout, ProgramExited):
            pass
    if s.state != "running":
        status, error = ("timed_out" if s.state == "timeout" else "exited"), s.detail
    info = s.exit_info or {}
    return ProgramResult(
        status, error, s.output(), info.get("exit"), info.get("signal"), time.monotonic() - start
    )
