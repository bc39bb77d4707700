"""Child processes that cannot outlive their caller: one process group each, killed whole.

    rc = run_process_group([sys.executable, "-m", "torch.distributed.run", ...], stdout=log, timeout_s=600)

torchrun, and ranks' own helpers (dist_checkpointing's writer Manager, engine workers), start
processes of their own; waiting for the first child alone and killing it leaves the rest
behind. The command runs in a new session, and once it has exited or timed out every process
still in its group is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def run_process_group(argv: Sequence[str], *, stdout, timeout_s: float, env: dict | None = None) -> int | None:
    """The command's exit status, or None when it ran past `timeout_s` (it is killed then)."""
    proc = subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env if env is not None else dict(os.environ))
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    finally:
        kill_process_group(proc)


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process still in the group of `proc` (started with start_new_session=True),
    then reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
