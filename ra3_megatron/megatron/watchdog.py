"""A rank whose job is gone exits, within a bounded time, with a message that says why.

torchrun's agent kills its own workers when one of them fails, but nothing stops a rank when
- the agent itself dies (the rank is orphaned and runs or waits on, forever), or
- a rank on another node dies: the survivors block in their next collective until the process
  group's timeout (30 minutes by default), or longer in a wait that has none.

So every rank of a multi-rank job runs `start_watchdog`: a daemon thread that
- exits the rank when its parent process changes (it was orphaned);
- bumps a heartbeat counter of its own in the job's store and watches the next rank's (a ring:
  O(1) store traffic per rank however large the job). A counter that has not moved for
  `peer_timeout_s`, by this rank's own clock, means that peer is gone; the first rank to see it
  posts the verdict under one key that every watchdog reads, so all ranks stop within about
  `peer_timeout_s` + a poll;
- treats a store that stops answering (it lives in the agent or in rank 0) the same way.

Exiting kills the rank's child processes first (dist_checkpointing's writer Manager, rollout
engine workers), so nothing of the rank outlives it. The exit code is `EXIT_PEER_LOST`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from dataclasses import dataclass

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: the job may be resumed once its ranks are relaunched
_PREFIX = "ra3/watchdog/"
_started: threading.Thread | None = None
_stop = threading.Event()
_finish = None  # posts this rank's last word ("done" or "failed") into the job's store
_generation = 0  # a job may init and destroy its process group more than once (the EM phases)
_crash_message = ""


@dataclass(frozen=True)
class WatchdogConfig:
    peer_timeout_s: float = 60.0  # a peer's heartbeat still this long: it is gone
    interval_s: float = 2.0  # heartbeat and poll period

    @classmethod
    def from_env(cls) -> WatchdogConfig:
        """RA3_PEER_TIMEOUT_S overrides the timeout (0 turns the peer watch off)."""
        timeout = float(os.environ.get("RA3_PEER_TIMEOUT_S", cls.peer_timeout_s))
        return cls(peer_timeout_s=timeout, interval_s=min(cls.interval_s, max(timeout / 5, 0.2)))


def kill_children_and_exit(message: str, code: int = EXIT_PEER_LOST) -> None:
    """Print `message`, SIGKILL every descendant of this process, and leave at once."""
    import psutil

    print(f"ra3 watchdog: {message}; exiting (code {code})", file=sys.stderr, flush=True)
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(code)  # not sys.exit: the main thread may be stuck in a collective


def exit_when_orphaned(poll_s: float = 1.0, what: str = "process") -> threading.Thread:
    """A daemon thread that ends this process once its parent has died (Linux reparents it)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        kill_children_and_exit(f"{what} {os.getpid()}: its parent {parent} died")

    thread = threading.Thread(target=watch, name="ra3-orphan-watch", daemon=True)
    thread.start()
    return thread


def stop_watchdog() -> None:
    """This rank's distributed work ended cleanly: tell the peer watching it, stop the thread."""
    global _started, _finish
    _stop.set()
    if _finish is not None:
        _finish("done", "1")
    if _started is not None:
        _started.join(timeout=5.0)
    _started = _finish = None
    _stop.clear()


def _reporting_crashes(previous_hook):
    """An excepthook that posts an uncaught exception as the job's failure, then reports it as usual."""

    def hook(kind, value, tb) -> None:
        if _finish is not None:
            _finish("failed", f"{_crash_message} {kind.__name__}: {value}")
        previous_hook(kind, value, tb)

    return hook


def _job_store(timeout_s: float):
    """A client of the store the job's ranks rendezvoused on (torchrun's agent or rank 0)."""
    import datetime

    import torch.distributed as dist

    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=max(timeout_s, 1.0)),
        wait_for_workers=False,
    )


def _read_int(store, key: str) -> int | None:
    return int(store.get(key)) if store.check([key]) else None


def start_watchdog(rank: int, world: int, cfg: WatchdogConfig | None = None, *, store=None) -> threading.Thread | None:
    """Start this rank's watchdog (once per process group); None for a one-rank job.

    The rank also reports its own end: an uncaught exception posts the job's failure at once (the
    peers stop without waiting out the timeout), and `stop_watchdog` marks a clean end.
    """
    global _started, _finish, _generation, _crash_message
    cfg = cfg or WatchdogConfig.from_env()
    if world < 2 or _started is not None:
        return _started
    store = store if store is not None else _job_store(cfg.peer_timeout_s or 60.0)
    _generation += 1
    run = os.environ.get("TORCHELASTIC_RUN_ID", "job") + "." + os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    key = f"{_PREFIX}{run}.{_generation}/"
    peer = (rank + 1) % world

    def post(what: str, value: str) -> None:
        try:
            store.set(key + (what if what == "failed" else f"{what}/{rank}"), value)
        except Exception:  # noqa: BLE001 - best effort: the store may be gone with the job
            pass

    def watch() -> None:
        beats, seen, seen_at = 0, None, time.monotonic()
        while not _stop.is_set():
            try:
                beats += 1
                store.set(f"{key}beat/{rank}", str(beats))
                if store.check([key + "failed"]):
                    kill_children_and_exit(f"rank {rank}: the job failed ({store.get(key + 'failed').decode()})")
                now, count = time.monotonic(), _read_int(store, f"{key}beat/{peer}")
                if store.check([f"{key}done/{peer}"]):
                    return  # the peer finished cleanly: nothing left to watch
            except Exception as exc:  # noqa: BLE001 - any store error means the job is gone
                if _stop.is_set():
                    return
                kill_children_and_exit(f"rank {rank}: the job's store stopped answering ({type(exc).__name__}: {exc})")
            if count != seen:
                seen, seen_at = count, now
            elif cfg.peer_timeout_s and now - seen_at > cfg.peer_timeout_s:
                state = "never started" if count is None else "stopped"
                message = f"rank {peer} {state} answering for {now - seen_at:.0f} s (peer timeout {cfg.peer_timeout_s:g} s)"
                post("failed", f"rank {rank}: {message}")
                kill_children_and_exit(f"rank {rank}: {message}")
            _stop.wait(cfg.interval_s)

    if _generation == 1:  # once per process, whatever the number of process groups
        exit_when_orphaned(what=f"rank {rank}")  # its launcher (torchrun's agent) died
        atexit.register(stop_watchdog)  # a rank that returns normally has ended cleanly
        sys.excepthook = _reporting_crashes(sys.excepthook)
    _finish = post
    _crash_message = f"rank {rank} raised"
    _started = threading.Thread(target=watch, name="ra3-rank-watchdog", daemon=True)
    _started.start()
    return _started
