"""A packed forward of a Llama-family decoder: the prefix-cache scorer's fast path on CPU.

transformers runs padded [rows, length] batches, and for option rows that share their group's
prefix it wants the prefix K/V copied per row and per query head (index_select, cat, repeat_kv:
[rows, heads, prefix + option, head_dim] in every layer). Here one forward runs `Segments`:

- the tokens of all segments are packed into one sequence [T]: no padded tokens go through the
  linear layers, norms, RoPE and MLP;
- a segment attends causally to its own tokens and to all of its context's K/V (its group's
  prefix, or what the prefix store holds), and that K/V is never copied per segment or per
  query head: the query heads that share a KV head are stacked as the rows of one GEMM
  against it (`_Attention` has the two ways, prefix pass and option pass);
- linear layers run through oneDNN (`onednn.py`) in float32 or as bf16 matmuls (fp32
  accumulation). In bf16 mode an activation is rounded to bf16 once per layer input (shared by
  q/k/v, and by gate/up), and the gated MLP's product, the down projection's input, is formed
  in bf16. Norms, RoPE, attention, softmax and the residual stream stay float32.

Measured on the scorer benchmark (tools/bench_scoring.py: SmolLM2-135M, 16 groups x 5 options,
1 thread), against the scorer on transformers' forward with the same oneDNN linears: 1.4x in
float32, 1.5x with bf16 matmuls; float32 log-probs equal transformers' to ~1e-5.

Supported: float32 Llama / Mistral / Qwen2 decoders on CPU (RMSNorm, RoPE, GQA attention
with optional biases, gated MLP, no sliding window); `packable` says whether a model is one,
else the scorer takes the transformers path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ra3_megatron.rollout.cpu_accel.onednn import bf16_weight, onednn_available

_ATTN = {"LlamaAttention", "MistralAttention", "Qwen2Attention"}
_MLP = {"LlamaMLP", "MistralMLP", "Qwen2MLP"}
_NORM = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (K, V), each [kv_heads, length, head_dim]


def packable(model) -> bool:
    """A float32 Llama-family model on CPU whose layers this module reproduces exactly."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(base, a) for a in ("embed_tokens", "rotary_emb", "norm")):
        return False
    if model.device.type != "cpu" or model.dtype != torch.float32:
        return False
    if type(base.norm).__name__ not in _NORM or getattr(model.config, "pretraining_tp", 1) != 1:
        return False
    if getattr(model.config, "sliding_window", None) is not None:  # no windowed attention here
        return False
    return all(
        type(layer.self_attn).__name__ in _ATTN
        and type(layer.mlp).__name__ in _MLP
        and type(layer.input_layernorm).__name__ in _NORM
        and type(layer.post_attention_layernorm).__name__ in _NORM
        for layer in layers
    )


@dataclass(frozen=True, kw_only=True)
class Segments:
    """How the packed tokens of one forward split into segments.

    lengths: tokens per segment, in packed order (each >= 1). contexts: per segment, an index
    into the forward's context K/V list, or -1. Adjacent segments with the same context meet
    it in one GEMM: put them next to each other.
    """

    lengths: list[int]
    contexts: list[int]


class _Attention:
    """One forward's attention plan (the layout is the same in every layer).

    Two ways, by the shape of the batch:
    - every segment has a context of its own, or none (the prefix pass): per block of a
      segment's queries, a GEMM of the stacked queries against [context keys; own keys up to
      the block's end] with a causal mask on the block's own keys, a softmax, a GEMM with the
      values (`_RunKV`: all KV heads batched, or per KV head, by size);
    - segments share a context (the option pass): the own parts run padded through the CPU
      flash kernel, which also returns each query's log-sum-exp; then per block of a run of
      segments sharing a context, a GEMM of the stacked queries against the context keys plus
      one extra column holding the own part's log-sum-exp. A softmax over
      that row weighs the context keys and the own part exactly as one softmax over all keys
      would; the extra column's weight multiplies the own part's (normalised) output.
    Query blocks of `block` tokens bound the [block * heads-per-KV-head, keys] score matrix.
    """

    def __init__(self, seg: Segments, device, onednn: bool, block: int = 256):
        self.device, self.onednn, self.block = device, onednn, block
        starts = [0]
        for n in seg.lengths[:-1]:
            starts.append(starts[-1] + n)
        used = [c for c in seg.contexts if c >= 0]
        self.shared = len(used) != len(set(used))
        # (context or -1, first token, end token) of each run of segments sharing a context.
        self.runs: list[tuple[int, int, int]] = []
        for a, n, c in zip(starts, seg.lengths, seg.contexts):
            if self.shared and c >= 0 and self.runs and self.runs[-1][0] == c and self.runs[-1][2] == a:
                self.runs[-1] = (c, self.runs[-1][1], a + n)
            else:
                self.runs.append((c, a, a + n))
        if self.shared:
            self.n_seg, self.width = len(seg.lengths), max(seg.lengths)
            lengths = torch.tensor(seg.lengths, device=device)
            # Packed token t of segment s at local index i sits at padded row s * width + i.
            seg_of = torch.repeat_interleave(torch.arange(self.n_seg, device=device), lengths)
            local = (
                torch.arange(int(lengths.sum()), device=device) - torch.tensor(starts, device=device)[seg_of]
            )
            self.pad_index = seg_of * self.width + local
            self.padded = any(n != self.width for n in seg.lengths)
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}

    def _causal(self, m: int, before: int, g: int) -> torch.Tensor:
        """Additive mask [m * g, before + m]: rows (token, head); all earlier keys, own keys <= token."""
        key = (m, before, g)
        if key not in self._masks:
            own = torch.full((m, m), float("-inf"), device=self.device).triu_(1)
            self._masks[key] = torch.cat([own.new_zeros(m, before), own], 1).repeat_interleave(g, 0)
        return self._masks[key]

    def __call__(self, q, k, v, contexts: list[KV], scale: float) -> torch.Tensor:
        """q [T, heads, d], k and v [T, kv_heads, d] (RoPE applied) -> attention output [T, heads * d]."""
        T, H, d = q.shape
        kvh = k.shape[1]
        g = H // kvh
        out = torch.empty_like(q)
        q = q.view(T, kvh, g, d)
        if self.shared:
            own, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                self._pad(q.view(T, H, d)), self._pad(k), self._pad(v), 0.0, True, scale=scale
            )
            own, lse = self._unpad(own), self._unpad(lse)
        for c, a, b in self.runs:
            if self.shared:
                if c < 0:
                    out[a:b] = own[a:b]
                else:
                    self._shared_run(q[a:b], own[a:b], lse[a:b], contexts[c], scale, out[a:b])
                continue
            keys, values = k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)
            if c >= 0:
                keys = torch.cat([contexts[c][0], keys], 1)
                values = torch.cat([contexts[c][1], values], 1)
            kv = _RunKV(keys, values, self.onednn)
            before = keys.shape[1] - (b - a)
            for t0 in range(a, b, self.block):
                t1 = min(b, t0 + self.block)
                rows = (t1 - t0) * g
                qs = torch.mul(q[t0:t1], scale).transpose(0, 1).reshape(kvh, rows, d)
                o, _ = kv.attend(qs, before + t1 - a, bias=self._causal(t1 - t0, before + t0 - a, g))
                out[t0:t1] = o.view(kvh, t1 - t0, g, d).transpose(0, 1).reshape(t1 - t0, H, d)
        return out.view(T, H * d)

    def _shared_run(self, q, own, lse, context: KV, scale: float, out) -> None:
        """One run of segments sharing a context: q [n, kv, g, d], own [n, H, d] and lse [n, H]
        from the flash pass over their own tokens; writes out [n, H, d]."""
        n, kvh, g, d = q.shape
        keys, values = context
        zero = keys.new_zeros(kvh, 1, d)
        # The extra key column: its score is the own part's log-sum-exp, its value zero.
        kv = _RunKV(torch.cat([keys, zero], 1), torch.cat([values, zero], 1), self.onednn)
        for t0 in range(0, n, self.block):
            t1 = min(n, t0 + self.block)
            rows = (t1 - t0) * g
            qs = torch.mul(q[t0:t1], scale).transpose(0, 1).reshape(kvh, rows, d)
            last = lse[t0:t1].view(t1 - t0, kvh, g).transpose(0, 1).reshape(kvh, rows)
            o, p_last = kv.attend(qs, kv.n, last=last)
            mine = own[t0:t1].view(t1 - t0, kvh, g, d).transpose(0, 1).reshape(kvh, rows, d)
            o.addcmul_(p_last, mine)
            out[t0:t1] = o.view(kvh, t1 - t0, g, d).transpose(0, 1).reshape(t1 - t0, kvh * g, d)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, h, d] -> [segments, h, width, d] (a transposed view of [segments, width, h, d])."""
        if self.padded:
            # Zeros, not garbage: a padded key's value still meets a zero attention weight.
            x = x.new_zeros(self.n_seg * self.width, *x.shape[1:]).index_copy_(0, self.pad_index, x)
        return x.view(self.n_seg, self.width, *x.shape[1:]).transpose(1, 2)

    def _unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[segments, h, width, ...] -> [T, h, ...]."""
        x = x.transpose(1, 2).reshape(self.n_seg * self.width, *x.shape[1:2], *x.shape[3:])
        return x.index_select(0, self.pad_index) if self.padded else x


class _RunKV:
    """One run's keys and values [kv_heads, n, d], and softmax attention of query blocks on them.

    Two ways to do the GEMMs, by size: a small block (the E-step's groups: a few short options)
    costs more in calls than in arithmetic, so all KV heads go in one batched matmul each way; a
    large one runs per KV head through oneDNN, about twice as fast as the batched kernel on the
    project's CPU (tools/bench_scoring.py).
    """

    PER_HEAD_MACS = 1 << 23  # multiply-adds per KV head from which per-head oneDNN GEMMs win

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, onednn: bool):
        self.keys, self.values, self.onednn = keys, values, onednn
        self.n = keys.shape[1]
        self._per_head = None

    def attend(self, qs, n_keys: int, bias=None, last=None):
        """qs [kv, rows, d] against the first n_keys keys -> (output [kv, rows, d], the
        attention weight on the last key [kv, rows, 1]). bias [rows, n_keys] is added to the
        scores; `last` [kv, rows] replaces the last key's scores."""
        kvh, rows, d = qs.shape
        if not self.onednn or rows * n_keys * d < self.PER_HEAD_MACS:
            s = torch.matmul(qs, self.keys[:, :n_keys].transpose(1, 2))
            if bias is not None:
                s.add_(bias)
            if last is not None:
                s[..., -1] = last
            p = torch.softmax(s, -1)
            return torch.matmul(p, self.values[:, :n_keys]), p[..., -1:]
        if self._per_head is None:  # contiguous operands: oneDNN is ~100x slower on strided ones
            self._per_head = (self.keys.contiguous(), self.values.transpose(1, 2).contiguous())
        keys, values_t = self._per_head
        out, p_last = qs.new_empty(kvh, rows, d), qs.new_empty(kvh, rows, 1)
        for h in range(kvh):
            s = _onednn_mm(qs[h].contiguous(), keys[h, :n_keys])
            if bias is not None:
                s.add_(bias)
            if last is not None:
                s[:, -1] = last[h]
            p = torch.softmax(s, -1)
            out[h] = _onednn_mm(p, values_t[h, :, :n_keys].contiguous())
            p_last[h] = p[:, -1:]
        return out, p_last


def _onednn_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [m, k] @ w [n, k]^T in float32 through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


class PackedDecoder:
    """Runs a `packable` model's decoder over packed segments (see the module docstring)."""

    def __init__(
        self, model, matmul_dtype: torch.dtype = torch.float32, onednn: bool = True, mlp_chunk: int = 1024
    ):
        if matmul_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"PackedDecoder: matmul_dtype must be float32 or bfloat16, not {matmul_dtype}")
        self.model, self.base = model, model.model
        self.bf16 = matmul_dtype == torch.bfloat16
        self.onednn = onednn and onednn_available()
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = self.base.layers[0].self_attn.head_dim
        self.mlp_chunk = mlp_chunk

    def _linear(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T (+ b). bf16 mode: x is bf16 and so is the result (bias added by the caller)."""
        if self.bf16:
            w = bf16_weight(module)
            if self.onednn:
                return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            return F.linear(x, w)
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, "none", [], "")
        return F.linear(x, module.weight, module.bias)

    def _f32(self, y: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
        """A bf16-mode linear output as float32, with the bias the matmul left out."""
        if not self.bf16:
            return y
        y = y.float()
        return y if module.bias is None else y.add_(module.bias)

    def _norm(self, x: torch.Tensor, norm) -> torch.Tensor:
        y = F.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)
        return y.to(torch.bfloat16) if self.bf16 else y

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, h, d] float32 -> x * cos + rotate_half(x) * sin, cos and sin [T, 1, d]."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = torch.empty_like(x)
        o1, o2 = out[..., :half], out[..., half:]
        torch.mul(x1, cos[..., :half], out=o1).addcmul_(x2, sin[..., :half], value=-1)
        torch.mul(x2, cos[..., half:], out=o2).addcmul_(x1, sin[..., half:])
        return out

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, seg: Segments, contexts: list[list[KV]]):
        """ids, positions [T] -> (hidden [T, H] before the final norm, per layer (k, v) [T, kv_heads, d]).

        contexts: per layer, the context K/V list that `seg.contexts` indexes.
        """
        T, d = ids.shape[0], self.head_dim
        if min(seg.lengths, default=0) < 1 or sum(seg.lengths) != T or len(seg.contexts) != len(seg.lengths):
            raise ValueError(f"PackedDecoder: segments {seg} do not split {T} tokens")
        attn = _Attention(seg, ids.device, self.onednn)
        x = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(x[None], positions[None])
        cos, sin = cos[0, :, None].float(), sin[0, :, None].float()
        kv_out = []
        for li, layer in enumerate(self.base.layers):
            sa, mlp = layer.self_attn, layer.mlp
            h = self._norm(x, layer.input_layernorm)
            q = self._f32(self._linear(sa.q_proj, h), sa.q_proj).view(T, self.heads, d)
            k = self._f32(self._linear(sa.k_proj, h), sa.k_proj).view(T, self.kv_heads, d)
            v = self._f32(self._linear(sa.v_proj, h), sa.v_proj).view(T, self.kv_heads, d)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            kv_out.append((k, v))
            o = attn(q, k, v, contexts[li] if contexts else [], sa.scaling)
            if self.bf16:
                o = o.to(torch.bfloat16)
            x = x + self._f32(self._linear(sa.o_proj, o), sa.o_proj)
            for a in range(0, T, self.mlp_chunk):
                # In token chunks: the [chunk, intermediate] activations stay in cache (and
                # small allocations are reused instead of page-faulted anew).
                xa = x[a : a + self.mlp_chunk]
                h = self._norm(xa, layer.post_attention_layernorm)
                gate, up = self._linear(mlp.gate_proj, h), self._linear(mlp.up_proj, h)
                if self.bf16 and (mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None):
                    gate, up = (
                        self._f32(gate, mlp.gate_proj).bfloat16(),
                        self._f32(up, mlp.up_proj).bfloat16(),
                    )
                xa += self._f32(self._linear(mlp.down_proj, mlp.act_fn(gate).mul_(up)), mlp.down_proj)
        return x, kv_out

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.norm(x)
