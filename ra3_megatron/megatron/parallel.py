"""Process groups for Megatron-Core: torch.distributed + parallel_state + the model-parallel seed.

Under torchrun the rank/world come from the environment; a plain single process works too
(MASTER_ADDR/PORT, RANK, WORLD_SIZE default to a one-rank group). On CPU the backend is gloo and the
CPU shims are applied first; on a GPU it is nccl and each process takes its LOCAL_RANK device.

    cfg = ParallelConfig(tp=2, pp=1)
    init_distributed(cfg)          # torchrun --nproc-per-node 2 ...
    ...
    destroy_distributed()

Every rank of a multi-rank group runs a watchdog (`megatron.watchdog`): a rank whose launcher or
peer died exits within about a minute (RA3_PEER_TIMEOUT_S) instead of waiting in a collective.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ra3_megatron.errors import ConfigError


@dataclass(kw_only=True)
class ParallelConfig:
    tp: int = 1  # tensor parallel
    pp: int = 1  # pipeline parallel
    vpp: int | None = None  # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    cp: int = 1  # context parallel
    ep: int = 1  # expert parallel
    seed: int = 1234
    timeout_minutes: int = 30

    def validate(self, world_size: int) -> None:
        for name in ("tp", "pp", "cp", "ep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        model_parallel = self.tp * self.pp * self.cp
        if world_size % model_parallel:
            raise ConfigError(
                f"world size {world_size} is not divisible by tp*pp*cp = {self.tp}*{self.pp}*{self.cp}"
            )
        if self.vpp is not None and (self.vpp < 1 or self.pp < 2):
            raise ConfigError(f"parallel.vpp={self.vpp} needs pp >= 2 and vpp >= 1")


def cuda_env_defaults(cfg: ParallelConfig) -> dict[str, str]:
    """Environment a GPU rank needs before its CUDA context exists (a user's own value wins).

    With TP > 1 Megatron-Core overlaps tensor-parallel communication (sequence parallelism's
    all-gather / reduce-scatter) with GEMMs only when kernels are queued on one hardware queue in
    issue order: CUDA_DEVICE_MAX_CONNECTIONS=1, as Megatron-LM's launch scripts and
    Megatron-Bridge set it.
    """
    return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"} if cfg.tp > 1 else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ENV_SET: list[str] = []  # rendezvous variables init_distributed set (destroy_distributed removes them)


def init_distributed(cfg: ParallelConfig) -> None:
    """Initialise torch.distributed (if needed), Megatron's parallel_state and its RNG tracker."""
    import torch
    import torch.distributed as dist

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        from ra3_megatron.megatron.cpu_shims import apply_cpu_shims

        apply_cpu_shims()
    if not dist.is_initialized():
        # A one-rank job started without torchrun: the rendezvous variables are set here and
        # removed again by destroy_distributed, so a later process this one starts (a torchrun
        # job, a converter) picks its own port instead of inheriting a stale one.
        defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": None, "RANK": "0", "WORLD_SIZE": "1"}
        for key, value in defaults.items():
            if key not in os.environ:
                os.environ[key] = value if value is not None else str(_free_port())
                _ENV_SET.append(key)
        if "LOCAL_RANK" not in os.environ:
            os.environ["LOCAL_RANK"] = os.environ["RANK"]
            _ENV_SET.append("LOCAL_RANK")
        if on_gpu:
            for key, value in cuda_env_defaults(cfg).items():  # before this process's CUDA context
                os.environ.setdefault(key, value)
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        import datetime

        dist.init_process_group(
            backend="nccl" if on_gpu else "gloo",
            timeout=datetime.timedelta(minutes=cfg.timeout_minutes),
        )
    cfg.validate(dist.get_world_size())
    from ra3_megatron.megatron.watchdog import start_watchdog

    start_watchdog(dist.get_rank(), dist.get_world_size())

    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp,
        pipeline_model_parallel_size=cfg.pp,
        virtual_pipeline_model_parallel_size=cfg.vpp,
        context_parallel_size=cfg.cp,
        expert_model_parallel_size=cfg.ep,
        distributed_timeout_minutes=cfg.timeout_minutes,
    )
    model_parallel_cuda_manual_seed(cfg.seed)


def destroy_distributed() -> None:
    """Tear down parallel_state and the default process group (safe to call twice)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        from ra3_megatron.megatron.watchdog import stop_watchdog

        stop_watchdog()
        dist.destroy_process_group()
    while _ENV_SET:
        os.environ.pop(_ENV_SET.pop(), None)


def is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
