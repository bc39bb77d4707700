"""One decode step of a Llama-family model without transformers' per-call machinery.

The E-step samples short thoughts (~12 tokens) for many prompts at once, so its decode loop is
thousands of steps of a few dozen rows each. On a small model, transformers' forward then costs
more in its per-call work (output records, mask and cache objects, hooks, module dispatch)
than in arithmetic. `LeanDecoder.step` runs the same layers with the same weights as plain
tensor ops: RMSNorm, q/k/v, RoPE at each row's position, the new K/V written into the decode
cache in place, GQA attention over the cache under the rows' padding mask, the gated MLP and
the head. Its logits equal transformers' to float rounding (tests/unit/test_rollout_hf.py).

Models: those `packed_llama.packable` accepts (float32 Llama / Mistral / Qwen2 on CPU); the
sampler keeps transformers' forward for the rest.
"""

from __future__ import annotations

import torch

from ra3_megatron.rollout.cpu_accel.packed_llama import PackedDecoder


class LeanDecoder(PackedDecoder):
    def step(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, layers) -> torch.Tensor:
        """ids, positions [R] -> logits [R, vocab] float32.

        valid: [R, n + 1] bool, which cache columns (after this step's write) each row attends to.
        layers: per layer, a cache with `update(k, v)` that appends [R, kv_heads, 1, d] in place
        and returns the whole K/V [R, kv_heads, n + 1, d] (`hf_sampling._GrowingLayer`).
        """
        R, d = ids.shape[0], self.head_dim
        x = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(x[None], positions[None])
        cos, sin = cos[0, :, None].float(), sin[0, :, None].float()
        # Additive mask [R, 1, 1, n + 1] for scores [R, kv_heads, group, n + 1].
        bias = torch.zeros(valid.shape, dtype=torch.float32, device=ids.device).masked_fill_(~valid, float("-inf"))
        bias = bias[:, None, None, :]
        group = self.heads // self.kv_heads
        for layer, cache in zip(self.base.layers, layers):
            sa, mlp = layer.self_attn, layer.mlp
            h = self._norm(x, layer.input_layernorm)
            q = self._linear(sa.q_proj, h).view(R, self.heads, d)
            k = self._linear(sa.k_proj, h).view(R, self.kv_heads, d)
            v = self._linear(sa.v_proj, h).view(R, self.kv_heads, 1, d)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            keys, values = cache.update(k[:, :, None], v)
            o = self._attend(q.view(R, self.kv_heads, group, d), keys, values, bias, sa.scaling)
            x = x + self._linear(sa.o_proj, o.reshape(R, self.heads * d))
            h = self._norm(x, layer.post_attention_layernorm)
            x = x + self._linear(mlp.down_proj, mlp.act_fn(self._linear(mlp.gate_proj, h)).mul_(
                self._linear(mlp.up_proj, h)))
        return self.model.get_output_embeddings()(self.final_norm(x)).float()

    @staticmethod
    def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                scale: float) -> torch.Tensor:
        """One query per row: q [R, kv_heads, group, d] against the cache [R, kv_heads, n, d].

        Query heads are grouped under their K/V head, so the cache is read as it is: sdpa's
        `enable_gqa` expands it to every query head (a copy of the whole cache per layer and
        step), and its flash kernel is built for long queries, not a single one: together twice
        the time of these two batched matmuls on the E-step's decode batches.
        """
        scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(scale).add_(bias)
        return torch.matmul(torch.softmax(scores, dim=-1), values)
