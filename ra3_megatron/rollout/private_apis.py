"""The private or unstable APIs of torch, transformers and vLLM that the rollout engines use.

Each one can change in any release, so each is listed here with where it is used, why, and the
versions it was tested with. `setup.py`'s `cpu` extra pins exactly those versions; the `gpu`
extra allows vLLM 0.32-0.34 and the base install transformers >= 5.8, which nothing here has
tested. `tests/unit/test_private_apis.py` scans the rollout modules for the kinds it knows
(torch's underscored ops and private imports, transformers' internal modules, vLLM's engine core,
parallel state and worker calls) and fails on one that is not listed, or on a listed one no
longer used. Most belong to the opt-in CPU accelerator (`cpu_accel/`, backend `hf-cpu`), which no
GPU run uses; the vLLM ones are on every backend="vllm" run; `common.py`'s two on every engine
call. The `hf` reference engine uses none (a test holds it so).
"""

from __future__ import annotations

from typing import NamedTuple


class PrivateAPI(NamedTuple):
    used_in: str
    why: str
    tested_with: str


PRIVATE_APIS: dict[str, PrivateAPI] = {
    "torch.overrides._get_current_function_mode_stack": PrivateAPI(
        "common.py", "engine calls look for Megatron's CPU device mode on top of torch's mode stack",
        "torch 2.13.0"),
    "torch.overrides._pop_mode_temporarily": PrivateAPI(
        "common.py", "engine calls run with Megatron's CPU device mode popped (every engine: `engine_call`)",
        "torch 2.13.0"),
    "torch.ops.mkldnn._linear_pointwise": PrivateAPI(
        "cpu_accel/onednn.py, cpu_accel/packed_llama.py", "oneDNN's prepacked linear on CPU (float32 and bf16 matmuls)", "torch 2.13.0"),
    "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu": PrivateAPI(
        "cpu_accel/packed_llama.py", "the attention's log-sum-exp, to merge a shared prefix's attention with a row's own",
        "torch 2.13.0"),
    "transformers.cache_utils.DynamicLayer": PrivateAPI(
        "cpu_accel/hf_sampling.py, cpu_accel/prefix_scorer.py",
        "subclassed (its __init__, `keys` / `values` and update contract): K/V layers that grow in place and "
        "share a group's prefix", "transformers 5.16.1-5.19"),
    "transformers.modeling_utils.AttentionInterface": PrivateAPI(
        "cpu_accel/gqa_attention.py", "registers the process-wide attention `gqa_sdpa` (grouped-query SDPA without "
        "repeating K/V)", "transformers 5.16.1-5.19"),
    "transformers.masking_utils.AttentionMaskInterface": PrivateAPI(
        "cpu_accel/gqa_attention.py", "the mask function that goes with `gqa_sdpa`", "transformers 5.16.1-5.19"),
    "transformers.masking_utils.sdpa_mask": PrivateAPI(
        "cpu_accel/gqa_attention.py", "the SDPA mask builder, registered for `gqa_sdpa` as it is for `sdpa`",
        "transformers 5.16.1-5.19"),
    "vllm.v1.engine.core.cleanup_dist_env_and_memory": PrivateAPI(
        "vllm_engine.py", "replaced while one in-process engine closes and another still runs on vLLM's "
        "global parallel state", "vllm 0.32.0"),
    "vllm worker: reload_weights": PrivateAPI(
        "vllm_engine.py", "new weights without a restart, from a folder (`weights_path`) or in memory "
        "(`weights_iterator`), called on the worker through `LLM.collective_rpc`", "vllm 0.32.0"),
    "vllm worker: get_model / quant_method.process_weights_after_loading": PrivateAPI(
        "vllm_engine.py", "`retie_output_layer`, run on the worker, points a tied output layer back at the "
        "embedding after a reload and prepares its CPU kernel again", "vllm 0.32.0"),
    "vllm.distributed.parallel_state": PrivateAPI(
        "vllm_engine.py", "destroy_model_parallel / destroy_distributed_environment after the last in-process "
        "engine closes, so a new engine can start in the same process", "vllm 0.32.0"),
}
