"""HF <-> Megatron-Core parameter mapping for Llama-family and Qwen2 models (pure torch, no Megatron).

Megatron names (GPTModel, global layer index i):
    embedding.word_embeddings.weight                 <- model.embed_tokens.weight        (vocab split)
    decoder.layers.i.input_layernorm.weight          <- model.layers.i.input_layernorm.weight
        (TE spec: decoder.layers.i.self_attention.linear_qkv.layer_norm_weight)
    decoder.layers.i.self_attention.linear_qkv.weight <- q_proj, k_proj, v_proj          (rows split)
        fused per query group g: [q heads of g; k_g; v_g], shape [ng*(nh/ng + 2)*hd, h];
        .bias likewise for Qwen2
    decoder.layers.i.self_attention.linear_proj.weight <- o_proj.weight                   (cols split)
    decoder.layers.i.pre_mlp_layernorm.weight        <- post_attention_layernorm.weight
        (TE spec: decoder.layers.i.mlp.linear_fc1.layer_norm_weight)
    decoder.layers.i.mlp.linear_fc1.weight           <- [gate_proj; up_proj]  (each half split by TP)
    decoder.layers.i.mlp.linear_fc2.weight           <- down_proj.weight                  (cols split)
    decoder.final_layernorm.weight                   <- model.norm.weight
    output_layer.weight                              <- lm_head.weight (embed_tokens when tied)

A Rule turns full HF tensors into this TP rank's shard (`to_local`) and TP shards back into full
HF tensors (`from_shards`); every rule is built from the global Megatron name and the HFArch alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ra3_megatron.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
_ROPE_TYPES = ("default", "llama3", "linear")


@dataclass(frozen=True, kw_only=True)
class HFArch:
    model_type: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    norm_eps: float
    qkv_bias: bool
    tie_word_embeddings: bool
    rope_theta: float
    rope_type: str
    rope_params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    attention_dropout: float = 0.0
    initializer_range: float = 0.02


def _get(cfg, name, default=None):
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def hf_arch(hf_config) -> HFArch:
    """Validate an HF config (PretrainedConfig or dict) and extract what the build needs."""
    model_type = _get(hf_config, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if _get(hf_config, "hidden_act", "silu") != "silu":
        raise ConfigError(
            f"hidden_act {_get(hf_config, 'hidden_act')!r} is not supported (SwiGLU needs silu)"
        )
    if model_type == "llama" and (_get(hf_config, "attention_bias") or _get(hf_config, "mlp_bias")):
        raise ConfigError("Llama configs with attention_bias or mlp_bias are not supported")
    if _get(hf_config, "use_sliding_window"):
        raise ConfigError("sliding-window attention (use_sliding_window=True) is not supported")
    rope = dict(_get(hf_config, "rope_parameters") or _get(hf_config, "rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    if rope_type not in _ROPE_TYPES:
        raise ConfigError(f"rope type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    if rope_type == "llama3":
        rope.setdefault("low_freq_factor", 1.0)
        rope.setdefault("high_freq_factor", 4.0)
        rope.setdefault("original_max_position_embeddings", 8192)
    if float(_get(hf_config, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported")
    theta = rope.get("rope_theta", _get(hf_config, "rope_theta", 10000.0))
    heads = int(_get(hf_config, "num_attention_heads"))
    hidden = int(_get(hf_config, "hidden_size"))
    groups = int(_get(hf_config, "num_key_value_heads") or heads)
    if heads % groups:
        raise ConfigError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {groups}")
    return HFArch(
        model_type=model_type,
        num_layers=int(_get(hf_config, "num_hidden_layers")),
        hidden_size=hidden,
        ffn_hidden_size=int(_get(hf_config, "intermediate_size")),
        num_heads=heads,
        num_query_groups=groups,
        head_dim=int(_get(hf_config, "head_dim") or hidden // heads),
        vocab_size=int(_get(hf_config, "vocab_size")),
        norm_eps=float(_get(hf_config, "rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2",
        tie_word_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
        rope_theta=float(theta),
        rope_type=rope_type,
        rope_params=rope,
        attention_dropout=float(_get(hf_config, "attention_dropout", 0.0) or 0.0),
        initializer_range=float(_get(hf_config, "initializer_range", 0.02) or 0.02),
    )


def padded_vocab_size(vocab: int, tp: int, divisible_by: int = 1) -> int:
    multiple = max(1, divisible_by) * tp
    return -(-vocab // multiple) * multiple


@dataclass(frozen=True)
class Rule:
    """One Megatron parameter <-> its HF tensors. kind: copy | row | col | vocab | qkv | fc1."""

    mcore: str  # global Megatron name (canonical: the local-spec name)
    hf: tuple[str, ...]
    kind: str
    arch: HFArch

    def to_local(self, hf: dict, tp_rank: int, tp: int, padded_vocab: int):
        import torch

        if self.kind == "copy":
            return hf[self.hf[0]]
        if self.kind == "vocab":
            full = hf[self.hf[0]]
            if padded_vocab > full.shape[0]:
                pad = full.new_zeros(padded_vocab - full.shape[0], *full.shape[1:])
                full = torch.cat([full, pad])
            return full.chunk(tp, 0)[tp_rank]
        if self.kind == "row":
            return hf[self.hf[0]].chunk(tp, 0)[tp_rank]
        if self.kind == "col":
            return hf[self.hf[0]].chunk(tp, 1)[tp_rank]
        if self.kind == "fc1":
            gate, up = (hf[n].chunk(tp, 0)[tp_rank] for n in self.hf)
            return torch.cat([gate, up])
        if self.kind == "qkv":
            return pack_qkv(*(hf[n] for n in self.hf), self.arch).chunk(tp, 0)[tp_rank]
        raise AssertionError(self.kind)

    def from_shards(self, shards: list) -> dict:
        import torch

        if self.kind == "copy":
            return {self.hf[0]: shards[0]}
        if self.kind == "vocab":
            return {self.hf[0]: torch.cat(shards)[: self.arch.vocab_size]}
        if self.kind == "row":
            return {self.hf[0]: torch.cat(shards)}
        if self.kind == "col":
            return {self.hf[0]: torch.cat(shards, 1)}
        if self.kind == "fc1":
            halves = [s.chunk(2, 0) for s in shards]
            return {
                self.hf[0]: torch.cat([h[0] for h in halves]),
                self.hf[1]: torch.cat([h[1] for h in halves]),
            }
        if self.kind == "qkv":
            return dict(zip(self.hf, unpack_qkv(torch.cat(shards), self.arch)))
        raise AssertionError(self.kind)


def pack_qkv(q, k, v, arch: HFArch):
    """[nh*hd, ...], [ng*hd, ...] x2 -> [ng*(nh/ng+2)*hd, ...] grouped as [q of group; k; v]."""
    import torch

    ng, hd = arch.num_query_groups, arch.head_dim
    rest = q.shape[1:]
    parts = [q.reshape(ng, -1, *rest), k.reshape(ng, hd, *rest), v.reshape(ng, hd, *rest)]
    return torch.cat(parts, 1).reshape(-1, *rest)


def unpack_qkv(fused, arch: HFArch):
    ng, hd = arch.num_query_groups, arch.head_dim
    qpg = arch.num_heads // ng
    rest = fused.shape[1:]
    grouped = fused.reshape(ng, (qpg + 2) * hd, *rest)
    q, k, v = grouped.split([qpg * hd, hd, hd], 1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


# Megatron layer suffix -> (canonical suffix, kind, HF suffixes)
_LAYER = {
    "input_layernorm.weight": ("input_layernorm.weight", "copy", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.layer_norm_weight": (
        "input_layernorm.weight",
        "copy",
        ("input_layernorm.weight",),
    ),
    "self_attention.linear_qkv.weight": (
        "self_attention.linear_qkv.weight",
        "qkv",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    "self_attention.linear_qkv.bias": (
        "self_attention.linear_qkv.bias",
        "qkv",
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    ),
    "self_attention.linear_proj.weight": (
        "self_attention.linear_proj.weight",
        "col",
        ("self_attn.o_proj.weight",),
    ),
    "pre_mlp_layernorm.weight": ("pre_mlp_layernorm.weight", "copy", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.layer_norm_weight": (
        "pre_mlp_layernorm.weight",
        "copy",
        ("post_attention_layernorm.weight",),
    ),
    "mlp.linear_fc1.weight": ("mlp.linear_fc1.weight", "fc1", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": ("mlp.linear_fc2.weight", "col", ("mlp.down_proj.weight",)),
}
_LAYER_RE = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def rule_for(name: str, arch: HFArch, layer_offset: int = 0) -> Rule:
    """Rule of a Megatron parameter name (layer index local to its chunk; add layer_offset)."""
    m = _LAYER_RE.fullmatch(name)
    if m:
        i, suffix = int(m.group(1)) + layer_offset, m.group(2)
        if suffix not in _LAYER:
            raise ConfigError(f"no HF mapping for Megatron parameter {name!r}")
        canon, kind, hf = _LAYER[suffix]
        return Rule(f"decoder.layers.{i}.{canon}", tuple(f"model.layers.{i}.{s}" for s in hf), kind, arch)
    if name == "embedding.word_embeddings.weight":
        return Rule(name, ("model.embed_tokens.weight",), "vocab", arch)
    if name == "decoder.final_layernorm.weight":
        return Rule(name, ("model.norm.weight",), "copy", arch)
    if name == "output_layer.weight":
        hf = "model.embed_tokens.weight" if arch.tie_word_embeddings else "lm_head.weight"
        return Rule(name, (hf,), "vocab", arch)
    raise ConfigError(f"no HF mapping for Megatron parameter {name!r}")


def export_order(arch: HFArch) -> list[str]:
    """Canonical global Megatron names, in HF order; the tied output layer is not exported."""
    names = ["embedding.word_embeddings.weight"]
    for i in range(arch.num_layers):
        for canon in dict.fromkeys(c for c, _, _ in _LAYER.values()):
            if canon.endswith(".bias") and not arch.qkv_bias:
                continue
            names.append(f"decoder.layers.{i}.{canon}")
    names.append("decoder.final_layernorm.weight")
    if not arch.tie_word_embeddings:
        names.append("output_layer.weight")
    return names


def hf_shapes(arch: HFArch) -> dict[str, tuple[int, ...]]:
    """Full HF tensor shapes, so receivers of a broadcast can allocate before the data arrives."""
    h, hd = arch.hidden_size, arch.head_dim
    q, kv, f = arch.num_heads * hd, arch.num_query_groups * hd, arch.ffn_hidden_size
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, h), "model.norm.weight": (h,)}
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, h)
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
            }
        )
        if arch.qkv_bias:
            shapes.update(
                {
                    p + "self_attn.q_proj.bias": (q,),
                    p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,),
                }
            )
    return shapes
