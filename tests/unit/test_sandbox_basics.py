"""The sandbox's set-up for each program, seen from inside, in both modes; plus its plumbing."""

from __future__ import annotations

import os
import resource
import threading
import time

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.eval import isolation
from ra3_megatron.eval.checker import check_many
from ra3_megatron.eval.problem import Problem
from ra3_megatron.eval.sandbox import SandboxConfig, SandboxPool, SandboxWorker, bwrap_usable, resolve_mode
from ra3_megatron.eval.session import ProgramError, run_program

pytestmark = pytest.mark.unit

CONFIG = dict(timeout_s=3.0, memory_mb=768, max_processes=20, max_file_mb=5, max_open_files=100)
INSIDE = """
import os, resource, sys
def probe():
    lim = {name: resource.getrlimit(getattr(resource, "RLIMIT_" + name))[1]
           for name in ("AS", "NPROC", "FSIZE", "NOFILE", "CORE", "CPU")}
    return {"pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0), "uid": os.getuid(),
            "cwd": os.getcwd(), "listing": os.listdir("."), "env": dict(os.environ), "limits": lim,
            "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")), "path": sys.path}
"""


@pytest.fixture(scope="module", params=["bwrap", "weak"])
def worker(request):
    if request.param == "bwrap" and not bwrap_usable():
        pytest.skip("bubblewrap is not installed or cannot create namespaces here")
    w = SandboxWorker(SandboxConfig(mode=request.param, **CONFIG), slot=3)
    yield w
    w.close()


def inside(worker) -> dict:
    with worker.session() as s:
        s.load(INSIDE)
        return s.call("probe")


def test_each_program_gets_its_own_group_limits_directory_and_environment(worker):
    a, b = inside(worker), inside(worker)
    assert a["pgid"] == a["sid"] == a["pid"]  # its own session and process group
    assert a["limits"] == {"AS": 768 << 20, "NPROC": 20, "FSIZE": 5 << 20, "NOFILE": 100, "CORE": 0, "CPU": 5}
    assert a["listing"] == [] and a["cwd"] != b["cwd"]  # a fresh, empty directory each time
    assert a["env"] == {"HOME": a["cwd"], "TMPDIR": a["cwd"], "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    assert len(a["fds"]) <= 5  # stdin/out/err, the result socket (and the listing's own fd)
    assert not any("site-packages" in p for p in a["path"])  # standard library only by default
    if os.geteuid() == 0 and (
        worker.mode == "bwrap" or isolation.others_can_run(os.path.realpath(os.sys.base_prefix))
    ):
        assert a["uid"] == isolation.program_uid(worker.mode, SandboxConfig().uid_base, 3, os.sys.base_prefix)
        assert a["uid"] >= SandboxConfig().uid_base  # a uid of its own (per process and worker slot)


def test_run_program_reports_output_exit_status_errors_and_timeouts(worker):
    ok = run_program(worker, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    assert ok.status == "ok" and ok.exit_code == 0 and "out\n" in ok.output and "err\n" in ok.output
    died = run_program(worker, "import os\nprint('bye', flush=True)\nos._exit(3)\n")
    assert died.status == "exited" and died.exit_code == 3 and died.output == "bye\n"
    err = run_program(worker, "x = 1\ny = x / 0\n")
    assert err.status == "error" and err.error == "ZeroDivisionError: division by zero (line 2)"
    slow = run_program(worker, "while True:\n    pass\n")
    assert slow.status == "timed_out" and CONFIG["timeout_s"] <= slow.seconds < CONFIG["timeout_s"] + 3


def test_program_exceptions_keep_their_builtin_type(worker):
    with worker.session() as s:
        s.load("def f(x):\n    raise ValueError(f'bad {x}')\n")
        with pytest.raises(ValueError, match="bad 3") as info:
            s.call("f", 3)
        assert isinstance(info.value, ProgramError) and info.value.line == 2


def test_a_dead_sandbox_is_replaced(worker):
    worker.start()
    os.killpg(worker._proc.pid, 9)  # the whole warm sandbox dies
    worker._proc.wait()
    assert inside(worker)["listing"] == []  # the next session starts a new one


def test_warm_sandboxes_are_recycled(monkeypatch):
    w = SandboxWorker(SandboxConfig(mode="weak", programs_per_sandbox=2, timeout_s=3))
    starts = []
    real_start = w.start
    monkeypatch.setattr(w, "start", lambda: (starts.append(1), real_start())[1])
    try:
        for _ in range(5):
            assert run_program(w, "pass").status == "ok"
    finally:
        w.close()
    assert len(starts) == 3


def test_mode_resolution(monkeypatch):
    with pytest.raises(ConfigError, match="auto, bwrap or weak"):
        resolve_mode("docker")
    monkeypatch.setattr(isolation, "bwrap_usable", lambda: False)
    assert resolve_mode("auto") == "weak" and resolve_mode("weak") == "weak"
    with pytest.raises(ConfigError, match="bwrap is missing"):
        resolve_mode("bwrap")
    monkeypatch.setattr(isolation, "bwrap_usable", lambda: True)
    assert resolve_mode("auto") == "bwrap"


def test_pool_checks_in_input_order_with_workers_in_parallel():
    p = Problem(task_id="sq", prompt="", entry_point="sq", test="assert sq(3) == 9")
    programs = [
        "def sq(x):\n    return x * x\n",
        "def sq(x):\n    return x + x\n",
        "def sq(x):\n    import time\n    time.sleep(0.3)\n    return 9\n",
    ] * 3
    with SandboxPool(SandboxConfig(mode="weak", timeout_s=3), size=3) as pool:
        assert pool.mode == "weak"
        outcomes = check_many([(p, prog) for prog in programs], pool=pool, progress=False)
    assert [o.passed for o in outcomes] == [True, False, True] * 3
    assert resource.getrlimit(resource.RLIMIT_NPROC) != (20, 20)  # the limits never leak into the checker


def test_a_sandbox_that_cannot_start_fails_clearly():
    w = SandboxWorker(SandboxConfig(mode="weak", python="/bin/false"))
    with pytest.raises(ConfigError, match="sandbox did not start"):
        w.start()
    w.close()


def test_sandboxes_started_from_a_short_lived_thread_keep_running():
    # bwrap --die-with-parent fires when the starting *thread* ends; the pool must not care
    p = Problem(task_id="sq", prompt="", entry_point="sq", test="assert sq(3) == 9")
    with SandboxPool(SandboxConfig(timeout_s=3), size=2) as pool:
        starter = threading.Thread(target=pool.start)
        starter.start()
        starter.join()
        time.sleep(0.3)
        assert all(w.running for w in pool._free)
        outcomes = check_many([(p, "def sq(x):\n    return x * x\n")] * 4, pool=pool, progress=False)
    assert [o.status for o in outcomes] == ["passed"] * 4
