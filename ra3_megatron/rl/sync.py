"""New policy weights from a trainer into the live rollout engines that sample from it.

Two ways, one call (`sync_weights`):
- in memory: the trainer yields (HF name, full tensor) pairs (a Megatron trainer gathers its
  shards: TP all-gather, PP broadcast) and each engine copies them in (`update_weights`), the way
  RL frameworks on Megatron hand weights to a colocated vLLM. Nothing touches the disk.
- by folder: the trainer writes an HF checkpoint dir and each engine reads it (`load_weights`):
  the fallback for engines that cannot take tensors (a vLLM engine with worker processes of its
  own), and what `mode="folder"` asks for.

"auto" takes memory when the trainer can give named tensors and every engine declares
`capabilities.in_memory_weights`. The trainer side is collective: every rank calls this the same
number of times, with its own engines.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.rl.job import Job

MODES = ("auto", "memory", "folder")


@dataclass(frozen=True)
class SyncResult:
    mode: str  # "memory" | "folder"
    seconds: float

    def metrics(self) -> dict[str, Any]:
        return {"sync_s": self.seconds, "sync_mode": self.mode}


def resolve_mode(mode: str, trainer: Any, engines: Sequence[Any]) -> str:
    """The way `mode` ("auto" | "memory" | "folder") comes to for this trainer and these engines."""
    if mode not in MODES:
        raise ConfigError(f"weight sync mode {mode!r}: choose one of {', '.join(MODES)}")
    can = callable(getattr(trainer, "named_weights", None)) and all(e.capabilities.in_memory_weights for e in engines)
    if mode == "memory" and not can:
        lacking = [type(e).__name__ for e in engines if not e.capabilities.in_memory_weights]
        why = f"engine(s) {', '.join(lacking)} take weights only by folder" if lacking else \
            f"{type(trainer).__name__} gives no named tensors"
        raise ConfigError(f"weight sync mode 'memory': {why}; use 'auto' or 'folder'")
    return "memory" if mode == "memory" or (mode == "auto" and can) else "folder"


def sync_weights(trainer: Any, engines: Sequence[Any], *, mode: str = "auto", folder: str | Path | None = None,
                 keep_folder: bool = False, exported: bool = False, job: Job | None = None) -> SyncResult:
    """The trainer's current weights into every engine; seconds measured from the trainer's first
    tensor (or first file) to the last engine's prefix-cache reset.

    `folder`: where the folder way writes (required for it); removed after the engines read it
    unless `keep_folder`. `exported`: the caller has just written the trainer's weights there (a
    checkpoint), so the folder way only reads it, and keeps it. `job`: the ranks sharing the folder
    (the trainer's export is collective and its first rank writes): every rank has read it before
    the first one removes it."""
    how = resolve_mode(mode, trainer, engines)
    t0 = time.perf_counter()
    if how == "memory":
        for engine in engines:  # streamed per engine: a full copy of the model is never held
            engine.update_weights(trainer.named_weights())
    else:
        if folder is None:
            raise ConfigError("weight sync by folder needs a folder to write to")
        out, job = Path(folder), job or Job()
        if not exported:
            if job.is_main:
                shutil.rmtree(out, ignore_errors=True)  # a half-written export of a crashed run
            trainer.export_weights(out)
        for engine in engines:
            engine.load_weights(str(out))
        if not (keep_folder or exported):
            job.barrier()
            if job.is_main:
                shutil.rmtree(out, ignore_errors=True)
    return SyncResult(how, time.perf_counter() - t0)
