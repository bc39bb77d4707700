"""Small helpers the rollout backends share: prompt tokenization and stop-string handling.

Every backend tokenizes a text prompt the same way (no special tokens added), so that the same
prompt gives the same ids on the fake, transformers and vLLM engines; callers that need a BOS
token put it in the ids themselves.
"""

from __future__ import annotations

from collections.abc import Sequence


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
