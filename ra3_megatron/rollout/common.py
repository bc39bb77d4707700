"""Small helpers the rollout backends share: prompt tokenization and stop-string handling.

Every backend tokenizes a text prompt the same way (no special tokens added), so that the same
prompt gives the same ids on the fake, transformers and vLLM engines; callers that need a BOS
token put it in the ids themselves.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

# Process-wide torch function modes that engine calls run without. Megatron's CPU shims push one
# for the life of the process once a Megatron model exists (it maps CUDA device arguments to the
# CPU); engines never name a CUDA device, and each of their many small torch ops would pay for the
# Python hook. The shims register their mode here (megatron imports rollout, never the reverse).
_SUSPENDED_MODES: list = []


def suspend_during_engine_calls(mode) -> None:
    """Engine calls run with `mode` popped whenever it is the innermost torch function mode."""
    if not any(m is mode for m in _SUSPENDED_MODES):
        _SUSPENDED_MODES.append(mode)


@contextlib.contextmanager
def engine_context():
    """The block runs without a registered mode on top of torch's mode stack (a no-op otherwise:
    a mode pushed above it by someone else is left alone, and so is the registered one under it)."""
    if not _SUSPENDED_MODES:
        yield
        return
    from torch.overrides import _get_current_function_mode_stack, _pop_mode_temporarily

    stack = _get_current_function_mode_stack()
    if not stack or not any(stack[-1] is m for m in _SUSPENDED_MODES):
        yield
        return
    with _pop_mode_temporarily():  # only this mode: tensor subclasses keep their own dispatch
        yield


def engine_call(method):
    """Decorator for an engine's public methods: they run in `engine_context()`."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with engine_context():
            return method(*args, **kwargs)

    return wrapper


def prompt_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a prompt: text is encoded without special tokens, ids pass through."""
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise ValueError("generate: empty prompt (give at least one token)")
    return ids


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one occurred); stops are not included."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens a and b share: bisection over slice compares, which run in C."""
    m = min(len(a), len(b))
    if a[:m] == b[:m]:
        return m
    lo, hi = 0, m  # a[:lo] == b[:lo]; a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def split_overrides(config_cls, config, overrides: dict):
    """A config from `config` (or defaults) with keyword overrides applied; unknown keys fail."""
    from dataclasses import fields, replace

    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"{config_cls.__name__} has no field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return replace(config or config_cls(), **overrides)


def release_cuda_memory() -> None:
    """Hand the memory of freed tensors back to the device (the next phase, or the other engine,
    allocates outside torch's cache); a no-op without CUDA or before this process touched it."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
