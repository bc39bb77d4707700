"""The `hf-cpu` backend: the transformers reference engine (`rollout/hf_engine.py`) with CPU fast paths.

Opt-in (`--backend hf-cpu`): it answers like `hf` (tests hold them equal, float32) but keeps
prefix K/V between calls and runs a Llama-family model through its own kernels:
`generate` decodes all prompts of a call in one batched KV-cached loop (`hf_sampling`), each
prompt's prefill starting from what the prefix store already holds for it, seeded per prompt
like vLLM; `token_logprobs_at` answers the E-step's decision probes and stores their K/V;
`score_groups` is `prefix_scorer.score_groups_prefix_cache` with a `kv_store.PrefixKVStore`, so a
prefix that extends one scored earlier computes only its new tokens (`scorer="naive"`: the
reference's padded forward). Every weight change clears the store; code that changes
`engine.model`'s weights in place must call `engine.store.clear()`.

Where it differs from `hf`: prompts sampled without a seed draw from the engine's one stream in
another order (seeded prompts match); a model outside the Llama family that scales its logits
(`final_logit_softcapping`) gets its first sampled token from unscaled logits.

It is built on private torch / transformers APIs (`rollout/private_apis.py`, pinned by the `cpu`
extra) and serves CPU runs only: GPU runs use `vllm`.

    engine = create_engine("hf-cpu", model="path/to/hf_dir", threads=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ra3_megatron.rollout.base import Completion, SamplingConfig, ScoreGroup, per_prompt
from ra3_megatron.rollout.common import engine_call, prompt_ids
from ra3_megatron.rollout.cpu_accel.hf_sampling import probe_logprobs, sample_batched, sequence_logprobs
from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore
from ra3_megatron.rollout.cpu_accel.onednn import onednn_linears
from ra3_megatron.rollout.cpu_accel.prefix_scorer import ScorerConfig, score_groups_prefix_cache
from ra3_megatron.rollout.hf_engine import HFEngine, HFEngineConfig, check_probe


@dataclass(frozen=True, kw_only=True)
class CPUAccelConfig(HFEngineConfig):
    scorer: str = "prefix-cache"  # | "naive" (the reference's padded forward)
    max_batch_tokens: int = 32768  # scorer batch bound (see ScorerConfig)
    # Sampling: one decode loop serves as many prompts as fit this K/V cache size (rows x
    # (prompt + max_tokens) x the model's K/V bytes per token): every split is another loop.
    sample_kv_mb: int = 1024
    # CPU scoring (score_groups and the E-step's <act> chain, kept alike so gains compare like
    # with like): "bfloat16" runs the matmuls in bf16 with fp32 accumulation, ~1.6x faster, a
    # token's log-prob off by ~0.03 on average (prefix_scorer.ScorerConfig.matmul_dtype).
    score_matmul_dtype: str = "float32"
    onednn: bool = True  # CPU: linear layers through oneDNN, ~2x MKL on AMD (onednn.py)
    prefix_store_mb: int = 512  # prefix K/V kept between score calls (kv_store); 0: none


class CPUAccelEngine(HFEngine):
    config_class = CPUAccelConfig

    def __init__(self, model: str | Path, config: CPUAccelConfig | None = None, **overrides):
        super().__init__(model, config, **overrides)
        cfg = self.config
        self.store = PrefixKVStore(cfg.prefix_store_mb << 20) if cfg.prefix_store_mb > 0 else None

    def check_config(self, cfg: CPUAccelConfig) -> None:
        super().check_config(cfg)
        if cfg.scorer not in ("prefix-cache", "naive"):
            raise ValueError(f"CPUAccelEngine: unknown scorer {cfg.scorer!r} (prefix-cache | naive)")
        if cfg.score_matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"CPUAccelEngine: score_matmul_dtype must be float32 or bfloat16, "
                             f"not {cfg.score_matmul_dtype!r}")

    def weights_changed(self) -> None:
        if self.store is not None:
            self.store.clear()  # K/V computed with the old weights

    # -- sampling ---------------------------------------------------------------------------
    @engine_call
    def generate(
        self, prompts: Sequence[str | Sequence[int]], config: SamplingConfig | Sequence[SamplingConfig]
    ) -> list[list[Completion]]:
        """All prompts that differ only in n and seed decode together (hf_sampling.sample_batched),
        as many per loop as `sample_kv_mb` holds; each prompt has its own generator."""
        ids = [prompt_ids(self.tokenizer, p) for p in prompts]
        configs = per_prompt(config, len(prompts))
        out: list[list[Completion] | None] = [None] * len(ids)
        by_rest: dict[SamplingConfig, list[int]] = {}
        for i, c in enumerate(configs):
            by_rest.setdefault(replace(c, n=1, seed=None), []).append(i)
        with torch.inference_mode(), onednn_linears(self.model, self.config.onednn):
            for rest, members in by_rest.items():
                for chunk in self._chunks(members, ids, configs):
                    gens = [self._generator(configs[i].seed) for i in chunk]
                    done = sample_batched(self.model, self.tokenizer, [ids[i] for i in chunk],
                                          [configs[i].n for i in chunk], rest, gens, self.store)
                    for i, comps in zip(chunk, done):
                        out[i] = comps
        return out  # type: ignore[return-value]

    def _kv_bytes_per_token(self) -> int:
        c = self.model.config.get_text_config(decoder=True)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return 2 * c.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize

    def _chunks(self, members: list[int], ids: list[list[int]], configs: list[SamplingConfig]) -> list[list[int]]:
        """Consecutive prompts whose decode cache (rows x (longest prompt + max_tokens)) stays
        within sample_kv_mb."""
        budget = (self.config.sample_kv_mb << 20) // self._kv_bytes_per_token()
        chunks: list[list[int]] = []
        rows = longest = 0
        for i in members:
            r, L = rows + configs[i].n, max(longest, len(ids[i]) + configs[i].max_tokens)
            if chunks and r * L > budget:
                chunks.append([i])
                rows, longest = configs[i].n, len(ids[i]) + configs[i].max_tokens
            else:
                if not chunks:
                    chunks.append([])
                chunks[-1].append(i)
                rows, longest = r, L
        return chunks

    @engine_call
    def token_logprobs_at(self, ids: Sequence[int], positions: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """log p(tokens[i] | ids[:positions[i]]): the E-step's decision probes, from one pass
        over ids whose K/V the store keeps for the thought prompts that follow."""
        if not check_probe(ids, positions, tokens):
            return []
        with torch.inference_mode(), onednn_linears(self.model, self.config.onednn):
            return probe_logprobs(self.model, ids, positions, tokens, self.store)

    @engine_call
    def sequence_logprobs(self, ids: Sequence[int], start: int) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= start, from one pass: the E-step's `<act>` scores."""
        dtype = getattr(torch, self.config.score_matmul_dtype)
        with torch.inference_mode(), onednn_linears(self.model, self.config.onednn, dtype):
            return sequence_logprobs(self.model, ids, start, self.store, matmul_dtype=dtype)

    # -- scoring ----------------------------------------------------------------------------
    @engine_call
    def score_groups(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        if self.config.scorer == "naive":
            return super().score_groups(groups)
        scfg = ScorerConfig(max_batch_tokens=self.config.max_batch_tokens, onednn=self.config.onednn,
                            matmul_dtype=self.config.score_matmul_dtype)
        return score_groups_prefix_cache(self.model, groups, scfg, store=self.store)
