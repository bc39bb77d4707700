"""Engines that outlive the job that asked for them: started once, then given new weights.

A vLLM engine takes tens of seconds to start (compilation, memory profiling) and a second or so
to take new weights in memory. The EM loop asks for pi's and q's engines in every round; through
an `EnginePool` the second round gets the first round's engines back, with the new model's
weights loaded (`load_weights`, prefix cache reset), instead of starting two more.

    pool = EnginePool(lambda model: create_engine("vllm", model=model))
    engine = pool.acquire("runs/em/iter_1/mstep/hf")   # a live engine holding these weights
    ...
    engine.close()        # back to the pool (still running)
    pool.sleep_idle()     # idle engines free accelerator memory while a trainer needs it
    pool.shutdown()       # the engines really close
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class _Lease:
    """An engine handed out by the pool: everything is the engine's, except `close()`, which
    gives it back."""

    def __init__(self, pool: EnginePool, engine: Any):
        object.__setattr__(self, "_pool", pool)
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._engine, name, value)

    def close(self) -> None:
        self._pool.release(self._engine)


class EnginePool:
    def __init__(self, make_engine: Callable[[str], Any]):
        self.make_engine = make_engine
        self.idle: list[Any] = []
        self.busy: list[Any] = []
        self.asleep: set[int] = set()
        self.started = 0  # engines created (the rest of the acquisitions reused one)
        self.reloads = 0

    def acquire(self, model: str) -> Any:
        """A live engine with `model`'s weights: an idle one reloaded, else a new one."""
        if self.idle:
            engine = self.idle.pop()
            if id(engine) in self.asleep:
                engine.wake_up()
                self.asleep.discard(id(engine))
            engine.load_weights(str(model))
            self.reloads += 1
        else:
            engine = self.make_engine(str(model))
            self.started += 1
        self.busy.append(engine)
        return _Lease(self, engine)

    __call__ = acquire  # a pool is a drop-in `make_engine`

    def release(self, engine: Any) -> None:
        if any(engine is e for e in self.busy):
            self.busy = [e for e in self.busy if e is not engine]
            self.idle.append(engine)

    def sleep_idle(self) -> None:
        """Idle engines free their accelerator memory (vLLM sleep mode; a no-op on CPU)."""
        for engine in self.idle:
            if id(engine) not in self.asleep:
                engine.sleep()
                self.asleep.add(id(engine))

    def shutdown(self) -> None:
        for engine in [*self.idle, *self.busy]:
            engine.close()
        self.idle, self.busy, self.asleep = [], [], set()
