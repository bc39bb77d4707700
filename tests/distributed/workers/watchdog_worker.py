"""One rank of a 2-rank job for the watchdog tests: `python watchdog_worker.py MODE WAIT_S PIDFILE`.

Every rank joins the job through `init_distributed` (what every multi-rank ra3 job calls), writes
its pid, then: rank 1 acts out MODE (sigkill: dies at once; raise: an uncaught exception; exit:
ends cleanly) and rank 0 waits WAIT_S seconds in a local sleep that no collective would interrupt.
MODE "sigkill0" kills rank 0 (the store's host when no torchrun agent runs) instead.
"""

import os
import signal
import sys
import time

from ra3_megatron.megatron.parallel import ParallelConfig, init_distributed

if __name__ == "__main__":
    mode, wait_s, pidfile = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    init_distributed(ParallelConfig())
    rank = int(os.environ["RANK"])
    with open(f"{pidfile}.{rank}", "w") as f:
        f.write(str(os.getpid()))
    print(f"rank {rank} up", flush=True)
    if mode == "sigkill" and rank == 1 or mode == "sigkill0" and rank == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "raise" and rank == 1:
        raise RuntimeError("planted failure")
    if mode == "exit" and rank == 1:
        sys.exit(0)
    time.sleep(wait_s)
    print(f"rank {rank} finished its wait", flush=True)
