"""A rank whose peer or launcher died exits within a bounded time, with a clear message.

Two ranks join one gloo job through `init_distributed` (as every multi-rank ra3 job does),
launched as separate processes (as on two nodes: no torchrun agent sees both) or under torchrun.
One rank dies; the survivor sits in a long local wait that no collective would interrupt, so
only the watchdog can end it. RA3_PEER_TIMEOUT_S is 5 s here (60 s by default).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ra3_megatron.megatron.watchdog import EXIT_PEER_LOST

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).parent / "workers" / "watchdog_worker.py"
PEER_TIMEOUT_S = 5
LONG_WAIT_S = 300  # what the survivor would sleep without a watchdog


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", RA3_PEER_TIMEOUT_S=str(PEER_TIMEOUT_S),
                **extra)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _two_ranks(tmp_path: Path, mode: str, wait_s: float = LONG_WAIT_S, bound_s: float = 90):
    """Launch both ranks as separate processes; returns ({rank: returncode}, {rank: output}, seconds)."""
    port = _free_port()
    procs = {}
    try:
        for rank in (0, 1):
            env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE="2")
            procs[rank] = subprocess.Popen(
                [sys.executable, str(WORKER), mode, str(wait_s), str(tmp_path / "pid")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )
        start = time.monotonic()
        outputs = {r: p.communicate(timeout=bound_s)[0] for r, p in procs.items()}
        return {r: p.returncode for r, p in procs.items()}, outputs, time.monotonic() - start
    finally:
        for p in procs.values():
            _kill_group(p)


def test_a_rank_whose_peer_was_killed_exits_with_a_message(tmp_path):
    codes, out, seconds = _two_ranks(tmp_path, "sigkill")
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == EXIT_PEER_LOST, out[0][-3000:]
    assert "ra3 watchdog: rank 0: rank 1 stopped answering" in out[0]
    assert seconds < LONG_WAIT_S / 3


def test_ranks_exit_when_the_store_host_dies(tmp_path):
    codes, out, _ = _two_ranks(tmp_path, "sigkill0")
    assert codes[0] == -signal.SIGKILL
    assert codes[1] == EXIT_PEER_LOST, out[1][-3000:]
    assert "ra3 watchdog: rank 1:" in out[1]


def test_a_peer_that_raises_stops_the_job_at_once(tmp_path):
    codes, out, seconds = _two_ranks(tmp_path, "raise")
    assert codes[1] == 1 and "planted failure" in out[1]
    assert codes[0] == EXIT_PEER_LOST, out[0][-3000:]
    assert "the job failed (rank 1 raised RuntimeError: planted failure)" in out[0]
    assert seconds < PEER_TIMEOUT_S + 60  # no need to wait out the timeout (start-up included)


def test_a_peer_that_ends_cleanly_is_not_a_failure(tmp_path):
    codes, out, _ = _two_ranks(tmp_path, "exit", wait_s=4 * PEER_TIMEOUT_S)
    assert codes == {0: 0, 1: 0}, out
    assert "rank 0 finished its wait" in out[0] and "watchdog" not in out[0]


def test_ranks_exit_when_their_torchrun_agent_is_killed(tmp_path):
    import psutil

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
           "none", str(LONG_WAIT_S), str(tmp_path / "pid")]
    agent = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    pids = []
    try:
        deadline = time.monotonic() + 90
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = [int(p.read_text()) for p in tmp_path.glob("pid.*") if p.read_text().strip()]
            time.sleep(0.5)
        assert len(pids) == 2, "the ranks did not come up"
        agent.kill()  # the agent only: the ranks run in sessions of their own (torchrun's choice)
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids], timeout=PEER_TIMEOUT_S + 30)
        assert not alive, f"ranks {[p.pid for p in alive]} outlived their agent"
    finally:
        _kill_group(agent)
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
