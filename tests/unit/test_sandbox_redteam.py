"""Red-team tests: each program tries to break one property of the sandbox.

Every test runs in three set-ups: `bwrap` (bubblewrap + the in-process guard), `bwrap-os` (the
guard switched off, so only the OS layer stands: namespaces, read-only root, uid, rlimits) and
`weak` (no bwrap: rlimits + guard). The bwrap ones skip when bwrap is missing or unusable.
For each attack: the program is contained, the machine is left as it was (no process left, no
file touched, the next program sees a clean directory), and it does not count as a pass.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import psutil
import pytest

from ra3_megatron.eval.checker import check_program
from ra3_megatron.eval.problem import Problem
from ra3_megatron.eval.sandbox import SandboxConfig, SandboxWorker, bwrap_usable

pytestmark = pytest.mark.unit

MODES = ["bwrap", "bwrap-os", "weak"]
LIMITS = dict(timeout_s=2.5, memory_mb=512, max_processes=16, max_file_mb=8, tmpfs_mb=32)
ADD = Problem(
    task_id="t/add",
    prompt="",
    entry_point="add",
    test="assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(10, 5) == 15",
)
GOOD = "def add(a, b):\n    return a + b\n"


def make_config(mode: str) -> SandboxConfig:
    if mode.startswith("bwrap") and not bwrap_usable():
        pytest.skip("bubblewrap is not installed or cannot create namespaces here")
    return SandboxConfig(
        mode="bwrap" if mode.startswith("bwrap") else "weak", guard=mode != "bwrap-os", **LIMITS
    )


@pytest.fixture(scope="module", params=MODES)
def worker(request):
    w = SandboxWorker(make_config(request.param))
    w.mode_name = request.param
    w.start()
    yield w
    w.close()


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def assert_machine_unchanged(worker, before: set[int]) -> None:
    deadline = time.monotonic() + 5
    while descendants() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert descendants() - before == set(), "the program left processes behind"
    with worker.session() as s:  # the next program sees only its own fresh directory
        s.load("import os\ndef look():\n    return os.listdir('.'), os.listdir('..')\n")
        here, parent = s.call("look")
    assert here == [] and len(parent) == 1


def attack(worker, program: str, problem: Problem = ADD):
    before = descendants()
    outcome = check_program(worker, problem, program)
    assert not outcome.passed, outcome
    assert_machine_unchanged(worker, before)
    assert check_program(worker, ADD, GOOD).passed, "the sandbox must still work after the attack"
    return outcome


def probe(worker, program: str, *args):
    """Run `program`'s function probe(*args) and return what it reports."""
    before = descendants()
    with worker.session() as s:
        s.load(program)
        report = s.call("probe", *args)
    assert_machine_unchanged(worker, before)
    return report


def test_a_correct_program_passes(worker):
    assert check_program(worker, ADD, GOOD).passed


def test_fork_bomb(worker):
    outcome = attack(
        worker,
        "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
        "        except Exception:\n            pass\n",
    )
    assert outcome.status in ("timed_out", "failed")


def test_process_count_is_limited(worker):
    program = (
        "import os, time\ndef probe(n):\n    made = 0\n    for _ in range(n):\n        try:\n"
        "            pid = os.fork()\n        except Exception:\n            break\n        if pid == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        made += 1\n    return made\n"
    )
    made = probe(worker, program, 100)
    assert made == 0 if worker.config.guard else made < LIMITS["max_processes"]


def test_infinite_loop(worker):
    outcome = attack(worker, "def add(a, b):\n    while True:\n        pass\n")
    assert outcome.status == "timed_out" and outcome.seconds < LIMITS["timeout_s"] + 3


def test_memory_bomb(worker):
    outcome = attack(
        worker, "def add(a, b):\n    hog = []\n    while True:\n        hog.append(bytearray(64 << 20))\n"
    )
    assert (
        outcome.status == "timed_out" or "MemoryError" in outcome.reason
    )  # timed out only on a swamped machine
    outcome = attack(worker, "def add(a, b):\n    return len(bytearray(1 << 40))\n")
    assert outcome.status == "failed" and "MemoryError" in outcome.reason


def test_huge_file(worker):
    outcome = attack(
        worker,
        "def add(a, b):\n    with open('big', 'wb') as f:\n        while True:\n"
        "            f.write(b'x' * (1 << 20))\n",
    )
    assert outcome.status == "failed" and "File too large" in outcome.reason


def test_many_files_fill_only_the_private_tmp(worker):
    if worker.mode != "bwrap":
        pytest.skip("the weaker mode bounds each file, not their total (docs/SANDBOX.md)")
    outcome = attack(
        worker,
        "def add(a, b):\n    for i in range(100):\n        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'x' * (7 << 20))\n",
    )
    assert "No space left" in outcome.reason


def test_files_outside_its_directory(worker, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    repo_file = os.path.abspath(__file__)
    program = f"""
import os, shutil
def probe():
    tries = {{
        "delete": lambda: os.remove({str(victim)!r}),
        "overwrite": lambda: open({str(victim)!r}, "w").write("pwned"),
        "create": lambda: open({str(tmp_path / "new.txt")!r}, "w").write("x"),
        "rmtree": lambda: shutil.rmtree({str(tmp_path)!r}),
        "rename": lambda: os.rename({str(victim)!r}, "stolen"),
        "hardlink": lambda: os.link({str(victim)!r}, "link"),
        "repo": lambda: open({repo_file!r}, "a").write("# pwned"),
        "etc": lambda: open("/etc/ra3_pwned", "w").write("x"),
        "chmod": lambda: os.chmod({str(victim)!r}, 0o777),
    }}
    report = {{}}
    for name, act in tries.items():
        try:
            act()
            report[name] = "done"
        except Exception as e:
            report[name] = type(e).__name__
    return report
"""
    mode_before = victim.stat().st_mode
    report = probe(worker, program)
    assert all(v != "done" for v in report.values()), report
    assert victim.read_text() == "precious" and victim.stat().st_mode == mode_before
    assert sorted(os.listdir(tmp_path)) == ["victim.txt"]
    assert not os.path.exists("/etc/ra3_pwned") and "pwned" not in open(repo_file).read()[-50:]


def test_secrets_in_the_environment(monkeypatch):
    secret = f"ra3-secret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("RA3_REDTEAM_SECRET", secret)
    program = f"""
import os
def probe():
    seen = [repr(dict(os.environ))]
    paths = ["/proc/self/environ", "/proc/1/environ", f"/proc/{{os.getppid()}}/environ", "/proc/{os.getpid()}/environ"]
    for path in paths + [f"/proc/{{p}}/environ" for p in os.listdir("/proc") if p.isdigit()]:
        try:
            seen.append(open(path, "rb").read().decode("latin-1"))
        except Exception as e:
            seen.append(type(e).__name__)
    return "\\n".join(seen)
"""
    for mode in MODES:
        if mode.startswith("bwrap") and not bwrap_usable():
            continue
        w = SandboxWorker(make_config(mode))  # started after the secret is set
        w.start()
        try:
            report = probe(w, program)
        finally:
            w.close()
        assert secret not in report and "RA3_REDTEAM_SECRET" not in report, mode


def test_network(worker):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = f"""
import socket
def probe():
    report = []
    for act in (lambda: socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"pwned"),
                lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", {port})),
                lambda: socket.getaddrinfo("example.com", 80)):
        try:
            act()
            report.append("done")
        except Exception as e:
            report.append(type(e).__name__)
    return report
"""
    try:
        report = probe(worker, program)
        with pytest.raises(TimeoutError):
            server.accept()  # nobody got through
    finally:
        server.close()
    assert report[0] != "done" and report[2] != "done", report


def test_killing_its_parent_and_other_processes(worker):
    if worker.mode_name == "bwrap-os" and os.geteuid() != 0:
        pytest.skip("non-root bwrap without the guard: the program shares the zygote's uid (docs/SANDBOX.md)")
    victim = subprocess.Popen(["sleep", "60"])
    program = f"""
import os, signal
def probe():
    report = []
    for act in (lambda: os.kill({victim.pid}, signal.SIGKILL), lambda: os.kill(os.getppid(), signal.SIGKILL),
                lambda: os.killpg({os.getpgid(victim.pid)}, signal.SIGKILL), lambda: os.kill({os.getpid()}, 0)):
        try:
            act()
            report.append("done")
        except Exception as e:
            report.append(type(e).__name__)
    return report
"""
    try:
        report = probe(worker, program)
        time.sleep(0.2)
        assert victim.poll() is None, "the victim process was killed"
    finally:
        victim.kill()
        victim.wait()
    assert report[0] != "done" and report[2] != "done", report
    assert check_program(worker, ADD, GOOD).passed  # the sandbox (the program's parent) is alive


@pytest.mark.parametrize(
    "program",
    [
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "import os\ndef add(a, b):\n    os._exit(0)\n",
        "import sys\ndef add(a, b):\n    sys.exit(0)\n",
        "def add(a, b):\n    raise SystemExit(0)\n",
        "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "import atexit, os\natexit.register(lambda: print('passed'))\ndef add(a, b):\n    print('ok'); os._exit(0)\n",
    ],
    ids=[
        "top-os_exit",
        "top-sys_exit",
        "fn-os_exit",
        "fn-sys_exit",
        "fn-SystemExit",
        "self-kill",
        "atexit-print",
    ],
)
def test_exiting_before_the_tests_run(worker, program):
    attack(worker, program)


def test_closing_stdout(worker):
    attack(worker, "import os\nos.closerange(0, 4096)\ndef add(a, b):\n    return a - b\n")
    # closing only its own stdout/stderr is harmless: a correct program still passes
    assert check_program(
        worker, ADD, "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + GOOD
    ).passed


@pytest.mark.parametrize(
    "program",
    [
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\ndef add(a, b):\n    return 0\n",
        "import builtins\nbuiltins.__import__ = None\ndef add(a, b):\n    return 0\n",
        "import sys\ndef skip(frame, event, arg):\n    frame.f_back and setattr(frame.f_back, 'f_trace', skip)\n"
        "    return skip\nsys.settrace(skip)\ndef add(a, b):\n    sys.settrace(skip)\n    return 0\n",
        "def check(candidate):\n    return True\ndef assertion(*a):\n    return True\ndef add(a, b):\n    return 0\n",
        "import sys\nz = sys.modules['__main__']\nz.encode = lambda v: 5\nz.send_msg.__globals__['json'].dumps = lambda *a, **k: '{\"ok\": true, \"value\": 5}'\n"
        "def add(a, b):\n    return 0\n",
        "import os, json, struct\ndef add(a, b):\n    frame = json.dumps({'ok': True, 'value': 5}).encode()\n"
        "    for fd in range(3, 64):\n        try:\n            os.write(fd, struct.pack('>I', len(frame)) + frame * 3)\n"
        "        except OSError:\n            pass\n    return 5\n",
    ],
    ids=["AssertionError", "__import__", "settrace-skip", "fake-check", "forged-encoder", "forged-frames"],
)
def test_patching_the_harness_or_assert(worker, program):
    attack(worker, program)


@pytest.mark.parametrize(
    "program",
    [
        "class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return AlwaysEqual()\n",
        "class Sneaky(int):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Sneaky(0)\n",
        "class E:\n    __eq__ = lambda s, o: True\ndef add(a, b):\n    return [E()]\n",
        "class S(str):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return S('no')\n",
    ],
    ids=["always-equal", "int-subclass", "in-a-list", "str-subclass"],
)
def test_an_object_that_equals_everything(worker, program):
    attack(worker, program)


def test_one_program_cannot_reach_the_next(worker):
    # a program leaves a sleeper behind and writes next to its directory; the next sees neither
    leave = (
        "import os, time\ndef add(a, b):\n    open('../planted.py', 'w').write('x = 1')\n    return a + b\n"
        "try:\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(60)\nexcept Exception:\n    pass\n"
    )
    before = descendants()
    check_program(worker, ADD, leave)
    assert_machine_unchanged(worker, before)


def test_sigterm_is_not_needed_to_stop_a_program_that_ignores_signals(worker):
    program = (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
        "def add(a, b):\n    while True:\n        pass\n"
    )
    assert attack(worker, program).status == "timed_out"
