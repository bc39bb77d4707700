"""transformers' sdpa attention without repeat_kv, for models with grouped-query attention.

With a padding mask, transformers' sdpa path copies every K/V head group-size times per layer
(repeat_kv): in a decode loop that is the whole cache per step, in a prefill over stored K/V the
whole stored context. torch's CPU and CUDA kernels take grouped heads directly (`enable_gqa`).

    with gqa_attention(model):   # models on "sdpa" switch; others are left as they are
        model(...)
"""

from __future__ import annotations

import torch

GQA_SDPA = "ra3_sdpa_gqa"


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention without its repeat_kv: with a padding mask it copies every
    K/V head group-size times per layer per step (the whole decode cache); torch's CPU kernel
    takes grouped heads directly (`enable_gqa`)."""
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling, is_causal=causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(GQA_SDPA, _sdpa_gqa)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)


class _Attention:
    """Within the block, the model's attention layers run `name` (a registered implementation)."""

    def __init__(self, model, name: str):
        self.configs = {id(c): c for c in (model.config, model.get_decoder().config)}.values()
        self.name = name

    def __enter__(self):
        self.saved = [c._attn_implementation for c in self.configs]
        for c in self.configs:
            c._attn_implementation = self.name

    def __exit__(self, *exc):
        for c, old in zip(self.configs, self.saved):
            c._attn_implementation = old


_register_attention()


def gqa_attention(model) -> _Attention:
    """Within the block, a model on transformers' "sdpa" attention runs it without repeat_kv."""
    current = model.config._attn_implementation
    return _Attention(model, GQA_SDPA if current == "sdpa" else current)
