"""Atomic, resumable Megatron checkpoints: model, optimizer, LR schedule, data position, RNG.

Layout under a checkpoint root (e.g. RUN_DIR/checkpoints):

    iter_0000010/          a dist_checkpointing directory (sharded model + optimizer, common.pt)
        ra3_state.json     step, consumed samples, extra state (written last, by rank 0)
        rng/rank_00000.pt  each rank's CPU / CUDA / model-parallel tracker / python RNG states
    latest                 the name of the newest COMPLETE checkpoint ("iter_0000010")

A save writes into `.tmp_iter_0000010`, then (all ranks done) renames it and replaces `latest`
with os.replace. A process killed mid-save leaves only a `.tmp_*` directory, which the next save
or resume removes; `latest` still names the previous checkpoint.

Distributed-optimizer quirks of Megatron-Core 0.16.1 handled here: the "dp_reshardable" sharding
type, dummy optimizer states before building the loading state dict, load_state_dict under
no_grad, and the per-parameter Adam `step` rebuilt after loading.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError, InputError

LATEST = "latest"
STATE_FILE = "ra3_state.json"
# Fault injection for the crash-during-save test: SIGKILL this process after the sharded data
# is written to the temporary directory but before it is renamed into place.
KILL_ENV = "RA3_TEST_KILL_DURING_SAVE_AT_STEP"


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root, or None."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not (path / STATE_FILE).is_file():
        raise InputError(pointer, f"points to {name!r}, which is not a complete checkpoint")
    return path


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Rank 0 deletes `.tmp_*` leftovers of interrupted saves; all ranks then synchronise."""
    root = Path(root)
    stale = sorted(root.glob(".tmp_iter_*")) if root.is_dir() else []
    if _rank() == 0:
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return stale


def _optimizer_metadata(engine) -> dict | None:
    if engine.cfg.optim.use_distributed_optimizer:
        return {"distrib_optim_sharding_type": "dp_reshardable"}
    return None


def _sharded_state_dict(engine, *, is_loading: bool, with_optimizer: bool = True) -> dict:
    from ra3_megatron.megatron.convert import model_sharded_state_dict

    # Megatron-LM's layout ("model", or "model<i>" per virtual stage): `ra3 convert` reads it too.
    state: dict[str, Any] = model_sharded_state_dict(engine.chunks)
    if with_optimizer:
        state["optimizer"] = engine.optimizer.sharded_state_dict(
            state, is_loading=is_loading, metadata=_optimizer_metadata(engine)
        )
        state["scheduler"] = engine.scheduler.state_dict()
    return state


def _rng_state() -> dict:
    import numpy as np
    import torch
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.get_rng_state(),
        "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def save_checkpoint(engine, root: str | Path, *, step: int, consumed_samples: int, extra: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    import torch
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = root / iter_name(step)
    tmp = root / f".tmp_{iter_name(step)}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(_sharded_state_dict(engine, is_loading=False), str(tmp))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{_rank():05d}.pt")
    _barrier()
    if os.environ.get(KILL_ENV) == str(step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if _rank() == 0:
        meta = {
            "step": step,
            "consumed_samples": consumed_samples,
            "world_size": _world_size(),
            "use_distributed_optimizer": engine.cfg.optim.use_distributed_optimizer,
            "extra": extra or {},
        }
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1))
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / LATEST)
    _barrier()
    return final


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _reset_adam_steps(engine) -> None:
    """After loading, give every parameter its OWN step tensor, valued from the param groups.

    torch Adam keeps one `step` tensor per parameter; the loaded states can share one object, which
    Adam would then increment once per parameter per step.
    """
    import torch

    optimizers = getattr(engine.optimizer, "chained_optimizers", [engine.optimizer])
    for opt in optimizers:
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state.get(p)
                if st is not None and "step" in st:
                    value = group.get("step", st["step"])
                    st["step"] = torch.tensor(float(value), dtype=torch.float32)


def load_checkpoint(engine, path: str | Path, *, load_optimizer: bool = True) -> dict:
    """Collective. Loads model (+ optimizer, scheduler, RNG) from a checkpoint dir; returns its state."""
    import torch
    from megatron.core import dist_checkpointing

    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise InputError(path, f"not a complete ra3 checkpoint (no {STATE_FILE})")
    meta = json.loads(state_file.read_text())
    if load_optimizer and meta.get("use_distributed_optimizer") != engine.cfg.optim.use_distributed_optimizer:
        raise ConfigError(
            f"{path}: saved with use_distributed_optimizer={meta.get('use_distributed_optimizer')}, "
            f"resuming with {engine.cfg.optim.use_distributed_optimizer}; change the flag or load weights only"
        )
    if load_optimizer and engine.cfg.optim.use_distributed_optimizer:
        for opt in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
            opt._init_optimizer_states_with_dummy_values()
    sharded = _sharded_state_dict(engine, is_loading=True, with_optimizer=load_optimizer)
    loaded = dist_checkpointing.load(sharded, str(path))
    keys = ["model"] if len(engine.chunks) == 1 else [f"model{i}" for i in range(len(engine.chunks))]
    with torch.no_grad():
        for key, chunk in zip(keys, engine.chunks):
            chunk.load_state_dict(loaded[key], strict=True)
        if load_optimizer:
            engine.optimizer.load_state_dict(loaded["optimizer"])
            engine.scheduler.load_state_dict(loaded["scheduler"])
    if load_optimizer:
        _reset_adam_steps(engine)
        rng_file = path / "rng" / f"rank_{_rank():05d}.pt"
        if meta.get("world_size") == _world_size() and rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=False))
    _barrier()
    return meta
