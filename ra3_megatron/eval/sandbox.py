"""A sandbox for model-written code: warm sandboxes that run each program in a fresh child.

How it works: a worker starts one sandbox (bubblewrap when `bwrap` works, else the weaker
mode) holding a small stdlib-only server, `_zygote.py`. Per program the server forks a child
that gets its own session and process group, rlimits (CPU seconds, address space, process count,
file size, open files, no core files), a fresh empty working directory, a scrubbed environment,
its own uid when we run as root, and an in-process audit-hook guard. The child runs the
program and answers calls over a socket with plain data only (`wire.py`); the tests run on the
trusted side (`checker.py`), so nothing the program does to its own interpreter (patched
builtins, `sys.exit`, `os._exit`, trace hooks, an `__eq__` that always answers True) can turn a
failure into a pass. When the parent is done, every process the program left is killed and its
files are removed. Wall time is enforced by the parent, CPU time by RLIMIT_CPU.

Protects against (bwrap mode): fork bombs (RLIMIT_NPROC under a per-worker uid or user
namespace), infinite loops, memory bombs, huge files (RLIMIT_FSIZE, size-limited /tmp),
writes or deletions outside the program's directory (read-only minimal root: /usr, /etc, the
Python install), reading secrets (cleared environment, new pid namespace; /root, /home and
the working tree are not mounted, but for the Python install), network access (new network
namespace), signals to the parent or other processes (pid namespace, different uid), and
forged results.
Weaker mode (no bwrap): the same rlimits, process group, directory, environment and result
protocol; network, processes, signals and file writes outside the directory are stopped only
by the in-process guard, which a program that escapes the interpreter (a CPython bug, a C
extension) can get around. Neither mode protects against kernel exploits, CPU-cache side
channels, or programs reading world-readable files (bwrap: inside its minimal root).
The full list: docs/SANDBOX.md.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ra3_megatron.errors import ConfigError
from ra3_megatron.eval.isolation import bwrap_argv, bwrap_usable, program_uid, resolve_mode, zygote_source
from ra3_megatron.eval.session import Session

__all__ = ["SandboxConfig", "SandboxPool", "SandboxWorker", "bwrap_usable", "resolve_mode"]

PREIMPORT = (
    "math re collections itertools functools heapq bisect string operator copy random typing "
    "fractions decimal datetime statistics hashlib array cmath json".split()
)


# Sandboxes are started from this one long-lived thread: bwrap's --die-with-parent fires when
# the *thread* that started it ends, and callers may well start workers from short-lived threads.
_LAUNCHER = ThreadPoolExecutor(1, thread_name_prefix="ra3-sandbox-launcher")


@dataclass(kw_only=True)
class SandboxConfig:
    mode: str = "auto"  # "auto" (bwrap when it works), "bwrap" or "weak"
    timeout_s: float = 10.0  # wall time per program: loading it plus every call the tests make
    memory_mb: int = 2048  # RLIMIT_AS of the program's processes
    max_processes: int = 32  # RLIMIT_NPROC (processes and threads of the program's uid)
    max_file_mb: int = 64  # RLIMIT_FSIZE: the largest file it may write
    max_open_files: int = 256
    tmpfs_mb: int = 256  # bwrap: size of the sandbox's private /tmp
    guard: bool = True  # the in-process audit-hook guard (tests switch it off to probe the OS layer)
    site_packages: bool = False  # let programs import this environment's installed packages
    # As root, programs run under uids from uid_base up (one per process and worker slot, see
    # isolation.program_uid): uids no real user has, as the clean-up kills all their processes.
    uid_base: int = 2_000_000_000
    programs_per_sandbox: int = 1000  # restart a warm sandbox after this many programs
    python: str | None = None  # interpreter for programs (default: this one's real binary)


class SandboxWorker:
    """One warm sandbox; `session()` gives a fresh child for one program. Not thread-safe:
    a worker serves one thread at a time (SandboxPool hands them out)."""

    def __init__(self, config: SandboxConfig | None = None, slot: int = 0):
        self.config = config or SandboxConfig()
        self.slot = slot
        self.mode = resolve_mode(self.config.mode)
        self._proc: subprocess.Popen | None = None
        self._ctl: socket.socket | None = None
        self._host_tmp: str | None = None
        self._served = 0
        self._next_id = 0

    def _spec(self) -> tuple[list[str], dict, str]:
        cfg = self.config
        python = cfg.python or os.path.realpath(sys.executable)
        prefix = os.path.realpath(sys.base_prefix)
        paths = sysconfig.get_paths()
        extra = sorted({paths["purelib"], paths["platlib"]}) if cfg.site_packages else []
        bwrap = self.mode == "bwrap"
        uid = program_uid(self.mode, cfg.uid_base, self.slot, prefix)
        host_tmp = tempfile.mkdtemp(prefix="ra3-sandbox-")
        if uid is not None and not bwrap:
            os.chown(host_tmp, uid, uid)
        limits = {"memory_bytes": cfg.memory_mb << 20, "file_bytes": cfg.max_file_mb << 20,
                  "open_files": cfg.max_open_files, "processes": cfg.max_processes,
                  "cpu_seconds": int(cfg.timeout_s) + 1}  # fmt: skip
        zcfg = {"limits": limits, "uid": uid, "guard": cfg.guard, "preimport": PREIMPORT, "extra_path": extra,
                "work_root": "/tmp" if bwrap else host_tmp, "private_tmp": bwrap, "pid_namespace": bwrap}  # fmt: skip
        argv = [python, "-I", "-S", "-c", zygote_source()]
        if bwrap:
            argv = bwrap_argv(binds=[prefix, os.path.dirname(python), *extra], tmpfs_mb=cfg.tmpfs_mb) + argv
        return argv, zcfg, host_tmp

    def start(self) -> None:
        self.close()
        argv, zcfg, host_tmp = self._spec()
        self._host_tmp = host_tmp
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zcfg["ctl_fd"] = theirs.fileno()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": host_tmp, "TMPDIR": host_tmp}
        self._stderr = tempfile.TemporaryFile()
        self._proc = _LAUNCHER.submit(
            subprocess.Popen, [*argv, json.dumps(zcfg)], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self._stderr, env=env, cwd=host_tmp, start_new_session=True,
        ).result()  # fmt: skip
        theirs.close()
        self._ctl = ours
        self._served = 0
        atexit.register(self.close)
        hello = self._ctl_recv(timeout=60.0)
        if hello is None or hello.get("op") != "hello":
            raise ConfigError(f"the {self.mode} sandbox did not start: {self._zygote_stderr()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _zygote_stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode(errors="replace").strip() or "no output"

    def _ctl_recv(self, timeout: float) -> dict | None:
        self._ctl.settimeout(timeout)
        try:
            data = self._ctl.recv(1 << 16)
        except (TimeoutError, OSError):
            return None
        return json.loads(data) if data else None

    def session(self, *, script: bool = False, capture_output: bool = False) -> Session:
        """A fresh child for one program. Close the session (or use `with`) when done."""
        if not self.running or self._served >= self.config.programs_per_sandbox:
            self.start()
        self._served += 1
        self._next_id += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out = tempfile.TemporaryFile() if capture_output else None
        fds = [theirs.fileno()] + ([out.fileno()] if out else [])
        msg = json.dumps({"op": "run", "id": self._next_id, "script": script}).encode()
        socket.send_fds(self._ctl, [msg], fds)
        theirs.close()
        on_close = functools.partial(self._end, self._next_id)
        return Session(ours, budget_s=self.config.timeout_s, on_close=on_close, output=out)

    def _end(self, sid: int) -> dict:
        try:
            self._ctl.send(json.dumps({"op": "end", "id": sid}).encode())
            done = self._ctl_recv(timeout=30.0)
        except OSError:
            done = None
        if done is None or done.get("id") != sid:  # a broken sandbox: start afresh next time
            why = self._zygote_stderr() if self._proc is not None else "closed"
            self.close()
            return {"exit": None, "signal": None, "sandbox_error": why}
        return done

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()
            self._proc = None
        if self._host_tmp is not None:
            shutil.rmtree(self._host_tmp, ignore_errors=True)
            self._host_tmp = None


class SandboxPool:
    """`size` warm workers shared by threads: `with pool.worker() as w: ...`."""

    def __init__(self, config: SandboxConfig | None = None, size: int | None = None):
        self.config = config or SandboxConfig()
        self.size = size or os.cpu_count() or 1
        self._free = [SandboxWorker(self.config, slot) for slot in range(self.size)]
        self._cond = threading.Condition()

    @property
    def mode(self) -> str:
        return self._free[0].mode if self._free else resolve_mode(self.config.mode)

    def worker(self):
        pool = self

        class _Lease:
            def __enter__(self):
                with pool._cond:
                    pool._cond.wait_for(lambda: pool._free)
                    self.w = pool._free.pop()
                return self.w

            def __exit__(self, *exc):
                with pool._cond:
                    pool._free.append(self.w)
                    pool._cond.notify()

        return _Lease()

    def start(self) -> None:
        """Start every warm sandbox now, so that a broken set-up fails before any work."""
        with ThreadPoolExecutor(self.size) as ex:
            list(ex.map(lambda w: w.start() if not w.running else None, list(self._free)))

    def close(self) -> None:
        for w in self._free:
            w.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
