"""Model build checks that need no Megatron import: FP8 / TE refusals, HF config validation,
the HF <-> Megatron mapping (fused QKV per query group, [gate; up], TP shards), import hygiene.
The TE spec / FP8 build runs only on a GPU (marked `gpu`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.megatron.convert_mapping import (
    export_order,
    hf_arch,
    hf_shapes,
    pack_qkv,
    padded_vocab_size,
    rule_for,
    unpack_qkv,
)
from ra3_megatron.megatron.model import ModelBuildConfig, resolve_transformer_impl

pytestmark = pytest.mark.unit

TINY = dict(
    model_type="llama",
    num_hidden_layers=2,
    hidden_size=8,
    intermediate_size=12,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=2,
    vocab_size=10,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    hidden_act="silu",
)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="checks the refusals of a machine without CUDA")
@pytest.mark.parametrize(
    "cfg, words",
    [
        (ModelBuildConfig(fp8="hybrid", transformer_impl="local"), ["transformer_engine", "silently"]),
        (ModelBuildConfig(fp8="hybrid"), ["transformer_engine", "silently"]),  # auto resolves to local on CPU
        (ModelBuildConfig(fp8="e4m3", transformer_impl="transformer_engine"), ["Transformer Engine", "CUDA"]),
        (ModelBuildConfig(transformer_impl="transformer_engine"), ["Transformer Engine", "CUDA"]),
    ],
)
def test_fp8_and_te_refused_without_gpu(cfg, words):
    with pytest.raises(ConfigError) as err:
        resolve_transformer_impl(cfg)
    for w in words:
        assert w in str(err.value)


def test_bad_fp8_values_refused():
    with pytest.raises(ConfigError, match="fp8_param"):
        resolve_transformer_impl(ModelBuildConfig(fp8_param=True))
    with pytest.raises(ConfigError, match="transformer_impl must be"):
        resolve_transformer_impl(ModelBuildConfig(transformer_impl="apex"))
    if not _cuda():
        assert resolve_transformer_impl(ModelBuildConfig()) == "local"


def test_hf_arch_llama_and_qwen2():
    a = hf_arch(TINY)
    assert (a.num_query_groups, a.head_dim, a.qkv_bias, a.rope_type) == (2, 2, False, "default")
    q = hf_arch({**TINY, "model_type": "qwen2", "tie_word_embeddings": True})
    assert q.qkv_bias and q.tie_word_embeddings
    r = hf_arch({**TINY, "rope_parameters": {"rope_type": "llama3", "factor": 32.0, "rope_theta": 5e5}})
    assert r.rope_type == "llama3" and r.rope_theta == 5e5
    assert r.rope_params["original_max_position_embeddings"] == 8192  # HF's default filled in


@pytest.mark.parametrize(
    "override, words",
    [
        ({"model_type": "gpt2"}, "not supported"),
        ({"hidden_act": "gelu"}, "silu"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"use_sliding_window": True}, "sliding"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"attention_bias": True}, "attention_bias"),
    ],
)
def test_hf_arch_refuses_unsupported(override, words):
    with pytest.raises(ConfigError, match=words):
        hf_arch({**TINY, **override})


def test_qkv_is_grouped_q_then_k_then_v():
    import torch

    arch = hf_arch(TINY)  # 4 heads, 2 groups, head_dim 2, hidden 8
    q = torch.arange(8.0).reshape(8, 1).expand(8, 8).clone()  # row r of q holds r
    k = 100 + torch.arange(4.0).reshape(4, 1).expand(4, 8).clone()
    v = 200 + torch.arange(4.0).reshape(4, 1).expand(4, 8).clone()
    fused = pack_qkv(q, k, v, arch)
    # group 0: q heads 0,1 (rows 0-3), k head 0 (rows 0-1), v head 0; then group 1.
    assert fused[:, 0].tolist() == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]
    back = unpack_qkv(fused, arch)
    assert all(torch.equal(x, y) for x, y in zip(back, (q, k, v)))
    bias = pack_qkv(q[:, 0], k[:, 0], v[:, 0], arch)
    assert torch.equal(bias, fused[:, 0])


@pytest.mark.parametrize("tp", [1, 2])
def test_rules_shard_and_unshard_every_parameter(tp):
    import torch

    arch = hf_arch({**TINY, "model_type": "qwen2", "vocab_size": 11})
    gen = torch.Generator().manual_seed(0)
    hf = {n: torch.randn(s, generator=gen) for n, s in hf_shapes(arch).items()}
    padded = padded_vocab_size(arch.vocab_size, tp)
    seen = set()
    for name in export_order(arch) + ["output_layer.weight"]:
        rule = rule_for(name, arch)
        shards = [rule.to_local(hf, r, tp, padded) for r in range(tp)]
        back = rule.from_shards(shards)
        assert set(back) == set(rule.hf)
        assert all(torch.equal(back[n], hf[n]) for n in rule.hf), name
        seen.update(rule.hf)
    assert seen == set(hf)
    fc1 = rule_for("decoder.layers.1.mlp.linear_fc1.weight", arch).to_local(hf, 0, 2, padded)
    gate, up = hf["model.layers.1.mlp.gate_proj.weight"], hf["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(fc1, torch.cat([gate[:6], up[:6]]))  # each TP rank holds [gate_r; up_r]
    emb = rule_for("embedding.word_embeddings.weight", arch).to_local(hf, 1, 2, 12)
    assert emb.shape == (6, 8) and torch.equal(emb[-1], torch.zeros(8))  # vocab 11 padded to 12


def test_te_spec_names_map_to_same_hf_tensors():
    arch = hf_arch(TINY)
    te = rule_for("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight", arch, layer_offset=3)
    local = rule_for("decoder.layers.3.input_layernorm.weight", arch)
    assert te == local and te.hf == ("model.layers.3.input_layernorm.weight",)
    assert rule_for("output_layer.weight", hf_arch({**TINY, "tie_word_embeddings": True})).hf == (
        "model.embed_tokens.weight",
    )
    with pytest.raises(ConfigError, match="no HF mapping"):
        rule_for("decoder.layers.0.self_attention.q_layernorm.weight", arch)


def test_shapes_match_transformers(tiny_model_dir):
    from safetensors import safe_open

    arch = hf_arch(json.loads((tiny_model_dir / "config.json").read_text()))
    with safe_open(tiny_model_dir / "model.safetensors", framework="pt") as f:
        real = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert real == hf_shapes(arch)


def test_importing_model_module_does_not_import_megatron():
    code = (
        "import sys, ra3_megatron.megatron.model, ra3_megatron.megatron.convert, ra3_megatron.cli.convert; "
        "print([m for m in sys.modules if m.startswith(('megatron', 'torch.distributed', 'transformer_engine'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_te_spec_and_fp8_build_on_gpu(tiny_model_dir):
    import torch
    from transformers import AutoConfig

    from ra3_megatron.megatron.model import build_model_chunks, load_hf_weights_into, te_available
    from ra3_megatron.megatron.parallel import ParallelConfig, destroy_distributed, init_distributed

    if not te_available():
        pytest.skip("needs Transformer Engine")
    init_distributed(ParallelConfig())
    try:
        cfg = AutoConfig.from_pretrained(tiny_model_dir)
        chunks = build_model_chunks(cfg, ModelBuildConfig(params_dtype="bfloat16"))
        assert chunks[0].config.transformer_impl == "transformer_engine"
        names = dict(chunks[0].named_parameters())
        assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in names
        load_hf_weights_into(chunks, tiny_model_dir)
        major, minor = torch.cuda.get_device_capability()
        if major * 10 + minor >= 89:
            fp8 = build_model_chunks(cfg, ModelBuildConfig(params_dtype="bfloat16", fp8="hybrid"))
            assert fp8[0].config.fp8 == "hybrid"
        else:
            with pytest.raises(ConfigError, match="not supported on sm"):
                build_model_chunks(cfg, ModelBuildConfig(fp8="hybrid"))
    finally:
        destroy_distributed()


def _fake_te(monkeypatch, *, fp8=(True, ""), block=(True, ""), mx=(True, ""), public=True):
    """A Transformer Engine whose per-recipe checks answer as given (TE >= 2.8 layout, or the
    older FP8GlobalStateManager class methods), on a GPU that torch reports as present."""
    import sys
    import types

    import torch

    answers = {"fp8": fp8, "fp8_block_scaling": block, "mxfp8": mx}
    te = types.ModuleType("transformer_engine.pytorch")
    if public:
        for kind, answer in answers.items():
            setattr(te, f"is_{kind}_available", lambda return_reason=False, a=answer: a if return_reason else a[0])
    else:
        fp8_mod = types.ModuleType("transformer_engine.pytorch.fp8")
        fp8_mod.FP8GlobalStateManager = type(
            "FP8GlobalStateManager", (), {f"is_{k}_available": staticmethod(lambda a=a: a) for k, a in answers.items()}
        )
        monkeypatch.setitem(sys.modules, "transformer_engine.pytorch.fp8", fp8_mod)
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", te)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.4")


@pytest.mark.parametrize("public", [True, False], ids=["te>=2.8", "te<2.8"])
def test_fp8_recipe_is_checked_with_te_per_recipe(monkeypatch, public):
    """An H100 with CUDA 12.4: TE's generic FP8 check passes, its block-scaling check does not."""
    from ra3_megatron.megatron.model import _check_fp8

    _fake_te(monkeypatch, block=(False, "FP8 block scaled GEMM requires CUDA >= 12.9."),
             mx=(False, "Device compute capability 10.0 or higher required"), public=public)
    for recipe in ("delayed", "tensorwise"):
        _check_fp8(ModelBuildConfig(fp8="hybrid", fp8_recipe=recipe), "transformer_engine")
    with pytest.raises(ConfigError, match=r"fp8_recipe='blockwise'.*sm90, CUDA 12.4.*requires CUDA >= 12.9"):
        _check_fp8(ModelBuildConfig(fp8="e4m3", fp8_recipe="blockwise"), "transformer_engine")
    with pytest.raises(ConfigError, match="fp8_recipe='mxfp8'.*10.0 or higher"):
        _check_fp8(ModelBuildConfig(fp8="e4m3", fp8_recipe="mxfp8"), "transformer_engine")
    with pytest.raises(ConfigError, match="fp8_recipe must be one of"):
        _check_fp8(ModelBuildConfig(fp8="hybrid", fp8_recipe="nvfp4"), "transformer_engine")


def test_fp8_refused_when_te_says_no_fp8_at_all(monkeypatch):
    from ra3_megatron.megatron.model import _check_fp8

    _fake_te(monkeypatch, fp8=(False, "Device compute capability 8.9 or higher required for FP8 execution."))
    with pytest.raises(ConfigError, match="8.9 or higher"):
        _check_fp8(ModelBuildConfig(fp8="hybrid", fp8_recipe="tensorwise"), "transformer_engine")


@pytest.mark.parametrize("tied", [True, False])
def test_transformer_config_carries_embedding_tying_for_bridge(tied):
    """Megatron-Bridge's exporter reads tying from the config, not from GPTModel."""
    pytest.importorskip("megatron.core")
    from transformers import LlamaConfig

    from ra3_megatron.megatron.model import transformer_config_from_hf

    hf = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    config = transformer_config_from_hf(hf, ModelBuildConfig())
    assert config.share_embeddings_and_output_weights is tied


def test_tensor_parallel_gpu_ranks_get_one_cuda_connection():
    from ra3_megatron.megatron.parallel import ParallelConfig, cuda_env_defaults

    assert cuda_env_defaults(ParallelConfig(tp=2)) == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert cuda_env_defaults(ParallelConfig(tp=1, pp=2)) == {}
