"""run_process_group: nothing the command started outlives it, on exit or on timeout."""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest

from ra3_megatron.process import run_process_group

pytestmark = pytest.mark.unit


def _grandchild(pidfile) -> list[str]:
    # The shell starts a long sleep in the background, records its pid, and returns at once.
    return ["bash", "-c", f"sleep 300 & echo $! > {pidfile}; exit 3"]


def test_a_grandchild_left_running_is_killed_with_the_group(tmp_path):
    rc = run_process_group(_grandchild(tmp_path / "pid"), stdout=subprocess.DEVNULL, timeout_s=30)
    assert rc == 3
    pid = int((tmp_path / "pid").read_text())

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 10  # SIGKILL is sent; on a loaded machine it lands a little later
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone()


def test_a_command_past_its_time_is_killed_and_reported_as_none():
    start = time.monotonic()
    assert run_process_group(["sleep", "300"], stdout=subprocess.DEVNULL, timeout_s=0.5) is None
    assert time.monotonic() - start < 10
