"""Per-token RoPE positions and explicit attention masks for Megatron-Core GPT chunks.

Megatron-Core's GPTModel rotates every row by positions 0..s-1 and ignores `position_ids` under
RoPE. The E-step's tree rows (`rl.tree_rows`) put a branch's tokens at their positions in
their own example, so `use_position_ids_for_rope(chunks)` makes each chunk's RotaryEmbedding
return the table at the batch's `position_ids` ([s, b, 1, d], which the unfused RoPE kernel
broadcasts over heads). It patches the instance's `forward` (state dicts and weight export see
no new module) and reads the ids the chunk is called with (a forward pre-hook).

`honours_attention_mask(chunks)`: whether the chunks' core attention applies an explicit
[b, 1, s, s] mask. Megatron's local DotProductAttention does; Transformer Engine's causal
kernels do not (they would silently attend across branches), and fused RoPE assumes 0..s-1.
"""

from __future__ import annotations

import types
from typing import Any


def honours_attention_mask(chunks: list) -> bool:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    cores = [m for c in chunks for m in c.modules() if type(m).__name__.endswith("DotProductAttention")]
    fused_rope = any(getattr(getattr(c, "config", None), "apply_rope_fusion", False) for c in chunks)
    return bool(cores) and all(isinstance(m, DotProductAttention) for m in cores) and not fused_rope


def use_position_ids_for_rope(chunks: list) -> None:
    """Idempotent. Rows whose position ids are 0..s-1 get the usual table."""
    for chunk in chunks:
        rotary = getattr(chunk, "rotary_pos_emb", None)
        if rotary is None or getattr(rotary, "_ra3_positions_hooked", False):
            continue
        rotary._ra3_positions_hooked = True
        rotary._ra3_position_ids = None
        plain = rotary.forward

        def forward(self, max_seq_len: int, *args: Any, _plain=plain, **kwargs: Any):
            pos = self._ra3_position_ids
            if pos is None:
                return _plain(max_seq_len, *args, **kwargs)
            emb = _plain(max(max_seq_len, int(pos.max()) + 1), *args, **kwargs)  # [P, 1, 1, d]
            return emb[:, 0][pos.t().to(emb.device)]  # [s, b, 1, d]

        rotary.forward = types.MethodType(forward, rotary)

        def capture(module, args, kwargs, _rotary=rotary):
            pos = args[1] if len(args) > 1 else kwargs.get("position_ids")
            _rotary._ra3_position_ids = pos

        chunk.register_forward_pre_hook(capture, with_kwargs=True)
