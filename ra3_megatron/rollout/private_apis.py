"""The private or unstable APIs of torch, transformers and vLLM that the rollout engines use.

Each one can change in any release, so each is listed here with where it is used, why, and the
versions it was tested with. `setup.py`'s `cpu` extra pins exactly those versions; the `gpu`
extra allows vLLM 0.32-0.34 and the base install transformers >= 5.8, which nothing here has
tested. `tests/unit/test_private_apis.py` scans the rollout modules for the kinds it knows
(torch's underscored ops, transformers' internal modules, vLLM's engine core, parallel state and
worker calls) and fails on one that is not listed, or on a listed one no longer used. Most are the CPU accelerator of the `hf` backend (`packed_llama`,
`onednn`, `hf_sampling`, `prefix_scorer`, `gqa_attention`), which no GPU run uses; the vLLM ones
are on every backend="vllm" run.
"""

from __future__ import annotations

from typing import NamedTuple


class PrivateAPI(NamedTuple):
    used_in: str
    why: str
    tested_with: str


PRIVATE_APIS: dict[str, PrivateAPI] = {
    "torch.ops.mkldnn._linear_pointwise": PrivateAPI(
        "onednn.py, packed_llama.py", "oneDNN's prepacked linear on CPU (float32 and bf16 matmuls)", "torch 2.13.0"),
    "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu": PrivateAPI(
        "packed_llama.py", "the attention's log-sum-exp, to merge a shared prefix's attention with a row's own",
        "torch 2.13.0"),
    "transformers.cache_utils.DynamicLayer": PrivateAPI(
        "hf_sampling.py, prefix_scorer.py",
        "subclassed (its __init__, `keys` / `values` and update contract): K/V layers that grow in place and "
        "share a group's prefix", "transformers 5.16.1-5.19"),
    "transformers.modeling_utils.AttentionInterface": PrivateAPI(
        "gqa_attention.py", "registers the process-wide attention `gqa_sdpa` (grouped-query SDPA without "
        "repeating K/V)", "transformers 5.16.1-5.19"),
    "transformers.masking_utils.AttentionMaskInterface": PrivateAPI(
        "gqa_attention.py", "the mask function that goes with `gqa_sdpa`", "transformers 5.16.1-5.19"),
    "transformers.masking_utils.sdpa_mask": PrivateAPI(
        "gqa_attention.py", "the SDPA mask builder, registered for `gqa_sdpa` as it is for `sdpa`",
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
