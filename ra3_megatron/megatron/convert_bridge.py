"""Megatron-Bridge's AutoBridge as the HF <-> Megatron weight mapper, where it imports (GPU stack).

Megatron-Bridge imports Transformer Engine at import time and needs Python 3.12, so on a CPU
machine it never imports and the project's own mapping (convert_mapping.py) is used. Its
mappings use the Transformer Engine parameter names, so it is only chosen for TE-spec models.

RA3_CONVERT_BACKEND: "auto" (default: bridge when it imports and the model is TE),
"own" (always the project's mapping), "bridge" (require it; error if unavailable).
"""

from __future__ import annotations

import os

from ra3_megatron.errors import ConfigError


def bridge_importable() -> bool:
    try:
        from megatron.bridge import AutoBridge  # noqa: F401
    except Exception:  # ImportError, or TE failing at import time on a CPU machine
        return False
    return True


def use_bridge(chunks) -> bool:
    choice = os.environ.get("RA3_CONVERT_BACKEND", "auto")
    if choice not in ("auto", "own", "bridge"):
        raise ConfigError(f"RA3_CONVERT_BACKEND must be auto, own or bridge, got {choice!r}")
    if choice == "own":
        return False
    te_model = all(getattr(c.config, "transformer_impl", "local") == "transformer_engine" for c in chunks)
    available = bridge_importable()
    if choice == "bridge" and not (available and te_model):
        raise ConfigError(
            "RA3_CONVERT_BACKEND=bridge needs megatron-bridge importable and a Transformer Engine model "
            f"(importable: {available}, TE model: {te_model})"
        )
    return available and te_model


def _bridge_for(chunks, hf_dir=None):
    from megatron.bridge import AutoBridge

    if hf_dir is not None:
        return AutoBridge.from_hf_pretrained(str(hf_dir))
    arch_config = getattr(chunks[0], "ra3_hf_config", None)
    if arch_config is None:
        raise ConfigError("AutoBridge export needs the HF config: build the model with build_gpt_model")
    return AutoBridge.from_hf_config(arch_config)


def load_hf_weights(chunks, hf_dir) -> None:
    _bridge_for(chunks, hf_dir).load_hf_weights(chunks, str(hf_dir))


def export_hf_weights(chunks):
    for item in _bridge_for(chunks).export_hf_weights(chunks, cpu=False):
        name, tensor = item[0], item[1]
        yield name, tensor
