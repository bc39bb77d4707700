"""Run Megatron-Core on a machine without CUDA: every CPU patch in one place.

Megatron-Core 0.16 assumes CUDA in a handful of places; each one, unpatched, fails with
"Torch not compiled with CUDA enabled". `apply_cpu_shims()` installs four patches, and only when
`torch.cuda.is_available()` is False (it is a no-op on a GPU machine, and idempotent):

1. `torch.cuda.current_device()` returns the CPU device (used as `device=` in ~40 places).
2. The model-parallel RNG tracker forks the CPU generator instead of a CUDA one, so the real
   `model_parallel_cuda_manual_seed(seed)` works; `torch.cuda.manual_seed` seeds the CPU generator.
3. `torch.cuda.synchronize()` is a no-op (pipeline p2p, checkpoint save).
4. A global `TorchFunctionMode` rewrites `device="cuda"` to cpu, makes `Tensor.cuda()` a no-op,
   drops `pin_memory`, and reports the CUDA type name from `Tensor.type()` (clip_grads asserts it).

Optionally (default on) dist_checkpointing's write-results queue uses a fork-context Manager
(0.3 s) instead of a spawn-context one (4-9 s on the first save of a process).

    from ra3_megatron.megatron.cpu_shims import apply_cpu_shims
    apply_cpu_shims()   # before building any Megatron object
"""

from __future__ import annotations

import contextlib

from ra3_megatron.rollout.common import engine_context, suspend_during_engine_calls

_APPLIED = False
_MODE = None


def shims_active() -> bool:
    return _APPLIED


def apply_cpu_shims(*, fork_checkpoint_manager: bool = True) -> bool:
    """Install the CPU patches; returns True when they are (now or already) active."""
    global _APPLIED
    import torch

    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    _patch_torch_cuda(torch)
    _patch_rng_tracker(torch)
    _enter_device_mode(torch)
    if fork_checkpoint_manager:
        _patch_checkpoint_queue()
    _APPLIED = True
    return True


def _patch_torch_cuda(torch) -> None:
    cpu = torch.device("cpu")
    torch.cuda.current_device = lambda: cpu
    torch.cuda.synchronize = lambda device=None: None
    # Megatron seeds "the default state" with torch.cuda.manual_seed; on CPU that is the CPU generator.
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)


def _patch_rng_tracker(torch) -> None:
    from megatron.core.tensor_parallel import random as mp_random

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    class CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
        """The CUDA tracker's bookkeeping over the CPU generator."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name=mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            # Same as the CUDA tracker minus its "CPU RNG changed" warning, which would always fire.
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    mp_random._get_cuda_rng_state = get_state
    mp_random._set_cuda_rng_state = set_state
    mp_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    # A tracker created before the shims (e.g. at import time) would hold CUDA code paths.
    mp_random.initialize_rng_tracker(force_reset=True)


def _cpu_device(dev):
    import torch

    if isinstance(dev, str) and dev.startswith("cuda"):
        return "cpu"
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return torch.device("cpu")
    return dev


def _enter_device_mode(torch) -> None:
    global _MODE
    from torch.overrides import TorchFunctionMode

    tensor_cuda = torch.Tensor.cuda
    tensor_pin = torch.Tensor.pin_memory
    tensor_type = torch.Tensor.type
    tensor_to = torch.Tensor.to

    class CudaToCpuMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is tensor_cuda or func is tensor_pin:
                return args[0]
            if func is tensor_type and len(args) == 1 and not kwargs:
                name = func(*args)
                return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            kwargs.pop("pin_memory", None)
            if func is tensor_to and len(args) > 1:
                args = (args[0], _cpu_device(args[1]), *args[2:])
            return func(*args, **kwargs)

    _MODE = CudaToCpuMode()
    _MODE.__enter__()  # stays on for the life of the process
    suspend_during_engine_calls(_MODE)  # rollout engines switch it off inside their calls


def device_mode_suspended():
    """A block of torch ops without the device mode (patch 4); a no-op when it is off.

    The mode is a Python `__torch_function__` on every torch call of the process. The rollout
    engines, which share a process with the Megatron trainer of q, run thousands of small ops
    per second and switch it off inside their own calls (`rollout.common.engine_call`); this is
    the same switch for other code that never names a CUDA device.
    """
    return engine_context()


def _manager_dies_with_its_rank() -> None:
    """The forked Manager inherits the rank's signal handlers (SIGTERM then does not stop it) and,
    once its rank is SIGKILLed, would serve on as an orphan: restore SIGTERM and watch the parent."""
    import signal

    from ra3_megatron.megatron.watchdog import exit_when_orphaned

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_when_orphaned(what="dist_checkpointing's writer Manager")


def _patch_checkpoint_queue() -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch import multiprocessing as mp

    def get_queue():
        # The queue only carries write results between processes of this host: fork is enough.
        if filesystem_async._results_queue is None:
            from multiprocessing.managers import SyncManager

            manager = SyncManager(ctx=mp.get_context("fork"))
            manager.start(initializer=_manager_dies_with_its_rank)
            filesystem_async._results_queue = manager.Queue()
        return filesystem_async._results_queue

    filesystem_async._get_write_results_queue = get_queue
