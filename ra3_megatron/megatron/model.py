"""Megatron-Core GPTModel from a Hugging Face config (Llama 3.x / SmolLM2 / Qwen2 / Qwen2.5).

RMSNorm, SwiGLU, RoPE (default, linear, llama3 scaling with the config's exact factors), GQA,
tied or untied embeddings, qkv bias for Qwen2. The local (pure Megatron-Core) layer spec runs on
CPU; the Transformer Engine spec is chosen when TE imports and a GPU is present. FP8 is accepted
only where it really runs (TE on sm89 with CUDA >= 12.1, or sm90+); everything else is a
ConfigError (with the local spec Megatron would build and silently run no FP8).

    init_distributed(ParallelConfig(tp=2))
    chunks = build_model_chunks(AutoConfig.from_pretrained(d), ModelBuildConfig())
    load_hf_weights_into(chunks, d)

Weight I/O (`load_hf_weights_into`, `export_hf_state_dict`, `save_hf`) lives in convert_weights.py
and is re-exported here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.megatron.convert_mapping import HFArch, hf_arch, padded_vocab_size
from ra3_megatron.megatron.convert_weights import export_hf_state_dict, load_hf_weights_into, save_hf

__all__ = [
    "ModelBuildConfig",
    "transformer_config_from_hf",
    "build_gpt_model",
    "build_model_chunks",
    "resolve_transformer_impl",
    "load_hf_weights_into",
    "export_hf_state_dict",
    "save_hf",
    "HFArch",
    "hf_arch",
    "padded_vocab_size",
    "te_available",
]

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(kw_only=True)
class ModelBuildConfig:
    transformer_impl: str = "auto"  # "auto" | "local" | "transformer_engine"
    fp8: str | None = None  # None | "hybrid" | "e4m3" (TE on a GPU only)
    fp8_recipe: str = "delayed"  # "delayed" | "tensorwise" | "blockwise" | "mxfp8"
    fp8_param: bool = False
    params_dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    seq_length: int = 4096
    sequence_parallel: bool = False
    recompute_granularity: str | None = None  # None | "full" | "selective"
    recompute_method: str | None = None  # "uniform" | "block" (with "full")
    recompute_num_layers: int | None = None
    fusions: bool | None = None  # bias/activation/rope fusions; None = on with TE + GPU
    make_vocab_size_divisible_by: int = 1  # pad the vocabulary to a multiple of this x tp
    parallel_output: bool = True  # logits stay split over TP ranks (vocab-parallel loss)
    use_cpu_initialization: bool | None = None  # None = True without CUDA
    perform_initialization: bool = True  # False skips random init (weights loaded right after)
    extra: dict[str, Any] = field(default_factory=dict)  # any other TransformerConfig field


def te_available() -> bool:
    """Transformer Engine imports (a half-installed TE raises RuntimeError, not ImportError)."""
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def resolve_transformer_impl(build_cfg: ModelBuildConfig) -> str:
    import torch

    impl = build_cfg.transformer_impl
    gpu = torch.cuda.is_available()
    if impl == "auto":
        impl = "transformer_engine" if gpu and te_available() else "local"
    elif impl == "transformer_engine" and not (gpu and te_available()):
        raise ConfigError(
            "transformer_impl='transformer_engine' needs Transformer Engine and a CUDA GPU "
            f"(CUDA available: {gpu}, TE importable: {te_available()}); use 'local' or 'auto'"
        )
    elif impl not in ("local", "transformer_engine"):
        raise ConfigError(f"transformer_impl must be auto, local or transformer_engine, got {impl!r}")
    _check_fp8(build_cfg, impl)
    return impl


def _check_fp8(build_cfg: ModelBuildConfig, impl: str) -> None:
    if build_cfg.fp8 is None:
        if build_cfg.fp8_param:
            raise ConfigError("fp8_param=True needs fp8 ('hybrid' or 'e4m3')")
        return
    import torch

    if build_cfg.fp8 not in ("hybrid", "e4m3"):
        raise ConfigError(f"fp8 must be None, 'hybrid' or 'e4m3', got {build_cfg.fp8!r}")
    if impl != "transformer_engine":
        raise ConfigError(
            f"fp8={build_cfg.fp8!r} needs transformer_impl='transformer_engine', got {impl!r}: "
            "Megatron-Core would build the local spec and silently run no FP8"
        )
    if not torch.cuda.is_available():
        raise ConfigError(f"fp8={build_cfg.fp8!r} needs a CUDA GPU; none is available")
    if build_cfg.fp8_recipe not in _FP8_RECIPE_SUPPORT:
        raise ConfigError(
            f"fp8_recipe must be one of {', '.join(_FP8_RECIPE_SUPPORT)}, got {build_cfg.fp8_recipe!r}"
        )
    ok, reason = te_fp8_recipe_support(build_cfg.fp8_recipe)
    if not ok:
        major, minor = torch.cuda.get_device_capability()
        raise ConfigError(
            f"fp8_recipe={build_cfg.fp8_recipe!r} cannot run on this GPU (sm{major}{minor}, CUDA "
            f"{torch.version.cuda}): {reason}. delayed/tensorwise need sm89 (Ada, CUDA >= 12.1) or sm90+; "
            "blockwise needs sm90+ with CUDA >= 12.9; mxfp8 needs sm100+ (Blackwell)"
        )


# Megatron's fp8_recipe -> the name of Transformer Engine's availability check for that recipe.
_FP8_RECIPE_SUPPORT = {"delayed": "fp8", "tensorwise": "fp8", "blockwise": "fp8_block_scaling", "mxfp8": "mxfp8"}


def te_fp8_recipe_support(recipe: str) -> tuple[bool, str]:
    """Transformer Engine's own verdict on one FP8 recipe on this GPU: (ok, reason).

    TE >= 2.8 exports `transformer_engine.pytorch.is_<kind>_available(return_reason=True)` (from
    `transformer_engine/pytorch/quantization.py`); older 2.x keep the same checks as class methods of
    `FP8GlobalStateManager` in `transformer_engine.pytorch.fp8`. The generic FP8 check alone passes
    blockwise scaling on an H100 with CUDA < 12.9, which then fails inside TE's GEMM.
    """
    kind = _FP8_RECIPE_SUPPORT[recipe]
    try:
        te = importlib.import_module("transformer_engine.pytorch")
    except Exception as exc:  # noqa: BLE001 - a half-installed TE raises more than ImportError
        return False, f"Transformer Engine does not import ({type(exc).__name__}: {exc})"
    check = getattr(te, f"is_{kind}_available", None)
    if check is not None:
        ok, reason = check(return_reason=True)
        return bool(ok), str(reason)
    for module in ("transformer_engine.pytorch.quantization", "transformer_engine.pytorch.fp8"):
        try:
            manager = importlib.import_module(module).FP8GlobalStateManager
        except (ImportError, AttributeError):
            continue
        check = getattr(manager, f"is_{kind}_available", None)
        if check is not None:
            ok, reason = check()
            return bool(ok), str(reason)
    return False, f"this Transformer Engine has no {kind} availability check (TE >= 2.2 is needed)"


def _torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ConfigError(f"params_dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)


def transformer_config_from_hf(hf_config, build_cfg: ModelBuildConfig):
    """TransformerConfig of the HF model, for this process's parallel layout (parallel_state)."""
    import torch
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.transformer_config import TransformerConfig

    arch = hf_arch(hf_config)
    impl = resolve_transformer_impl(build_cfg)
    gpu = torch.cuda.is_available()
    init = ps.model_parallel_is_initialized()
    tp = ps.get_tensor_model_parallel_world_size() if init else 1
    pp = ps.get_pipeline_model_parallel_world_size() if init else 1
    vpp = ps.get_virtual_pipeline_model_parallel_world_size() if init else None
    cp = ps.get_context_parallel_world_size() if init else 1
    if arch.num_layers % (pp * (vpp or 1)):
        raise ConfigError(f"{arch.num_layers} layers do not split into pp={pp} x vpp={vpp or 1} stages")
    if arch.num_query_groups % tp or arch.num_heads % tp:
        raise ConfigError(
            f"tp={tp} must divide the heads ({arch.num_heads}) and kv heads ({arch.num_query_groups})"
        )
    if build_cfg.sequence_parallel and not gpu:
        raise ConfigError("sequence_parallel needs a CUDA GPU (not supported by the CPU shims)")
    dtype = _torch_dtype(build_cfg.params_dtype)
    fusions = (impl == "transformer_engine" and gpu) if build_cfg.fusions is None else build_cfg.fusions
    kwargs: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=arch.attention_dropout,
        init_method_std=arch.initializer_range,
        bias_activation_fusion=fusions,
        bias_dropout_fusion=fusions,
        apply_rope_fusion=fusions,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        transformer_impl=impl,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=cp,
        sequence_parallel=build_cfg.sequence_parallel,
        use_cpu_initialization=(not gpu)
        if build_cfg.use_cpu_initialization is None
        else build_cfg.use_cpu_initialization,
        perform_initialization=build_cfg.perform_initialization,
        recompute_granularity=build_cfg.recompute_granularity,
        recompute_method=build_cfg.recompute_method,
        recompute_num_layers=build_cfg.recompute_num_layers,
    )
    if build_cfg.fp8 is not None:
        kwargs.update(fp8=build_cfg.fp8, fp8_recipe=build_cfg.fp8_recipe, fp8_param=build_cfg.fp8_param)
    kwargs.update(build_cfg.extra)
    config = TransformerConfig(**kwargs)
    # GPTModel takes tying as an argument, but Megatron-Bridge's exporter reads it from the config
    # (`model_bridge._share_embeddings_and_output_weights`, a getattr defaulting to False): without
    # it a tied model exports an untied lm_head from the last pipeline stage.
    config.share_embeddings_and_output_weights = arch.tie_word_embeddings
    return config


def _layer_spec(config):
    if config.transformer_impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(normalization="RMSNorm")


def _set_exact_rope(model, arch: HFArch) -> None:
    """Megatron's llama3 scaling hard-codes low/high factors 1/4 and 8192 positions: use the config's."""
    import torch

    rot = getattr(model, "rotary_pos_emb", None)
    if rot is None or arch.rope_type != "llama3":
        return
    dim = arch.head_dim
    device = rot.inv_freq.device
    base = 1.0 / (arch.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    p = arch.rope_params
    rot.inv_freq = rot._apply_scaling(
        base,
        factor=p["factor"],
        low_freq_factor=p["low_freq_factor"],
        high_freq_factor=p["high_freq_factor"],
        original_max_position_embeddings=p["original_max_position_embeddings"],
    )


def build_gpt_model(
    hf_config, build_cfg: ModelBuildConfig, *, pre_process=None, post_process=None, vp_stage=None
):
    """One GPTModel chunk; pre/post_process default to this rank's pipeline position."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.models.gpt import GPTModel

    arch = hf_arch(hf_config)
    config = transformer_config_from_hf(hf_config, build_cfg)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    rope_kwargs: dict[str, Any] = {}
    if arch.rope_type == "llama3":
        rope_kwargs = dict(rope_scaling=True, rope_scaling_factor=arch.rope_params["factor"])
    elif arch.rope_type == "linear":
        rope_kwargs = dict(seq_len_interpolation_factor=arch.rope_params["factor"])
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(config),
        vocab_size=padded_vocab_size(
            arch.vocab_size, config.tensor_model_parallel_size, build_cfg.make_vocab_size_divisible_by
        ),
        max_sequence_length=build_cfg.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=build_cfg.parallel_output,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        vp_stage=vp_stage,
        **rope_kwargs,
    )
    _set_exact_rope(model, arch)
    model.ra3_hf_arch = arch  # the weight converters read the HF shapes from here
    model.ra3_hf_config = hf_config
    _mark_tp_split_weights(model)
    for param in model.parameters():
        tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
    return model


def _mark_tp_split_weights(model) -> None:
    """With perform_initialization=False Megatron 0.16 skips the init helper that also marks the
    TP-split weights `tensor_model_parallel`; unmarked, the grad norm under TP counts them wrongly."""
    from megatron.core.tensor_parallel import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        set_tensor_model_parallel_attributes,
    )

    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or hasattr(weight, "tensor_model_parallel"):
            continue
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            stride = 2 if name.endswith("linear_fc1") and model.config.gated_linear_unit else 1
            set_tensor_model_parallel_attributes(weight, True, 0, stride)
        elif isinstance(module, RowParallelLinear):
            set_tensor_model_parallel_attributes(weight, True, 1, 1)


def build_model_chunks(hf_config, build_cfg: ModelBuildConfig) -> list:
    """This rank's model chunks (one per virtual pipeline stage), on the GPU when there is one.

    Like Megatron-LM's get_model without the DDP / Float16Module wrapping (the trainer adds those).
    """
    import torch
    from megatron.core import parallel_state as ps

    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    if ps.get_pipeline_model_parallel_world_size() > 1 and vpp is not None:
        chunks = [build_gpt_model(hf_config, build_cfg, vp_stage=i) for i in range(vpp)]
    else:
        chunks = [build_gpt_model(hf_config, build_cfg)]
    if torch.cuda.is_available():
        chunks = [c.cuda(torch.cuda.current_device()) for c in chunks]
    return chunks


def num_params(model_chunks) -> int:
    return sum(p.numel() for c in model_chunks for p in c.parameters())
