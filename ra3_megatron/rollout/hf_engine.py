"""The transformers rollout backend: the reference for tests, and the fast prefix-cache scorer.

`generate` decodes all prompts of a call in one batched KV-cached loop (`hf_sampling`), each
prompt's prefill starting from what the prefix store already holds for it, seeded per prompt
like vLLM: the same prompt with the same seed gives the same samples whatever else is in the
batch. `token_logprobs_at` answers the E-step's decision probes and stores their K/V. Returned log-probs are the raw model's (before
temperature / top-p), as vLLM's default `raw_logprobs`. `score_groups` is
`prefix_scorer.score_groups_prefix_cache` with a `kv_store.PrefixKVStore`, so a prefix that
extends one scored earlier computes only its new tokens (or the naive full-sequence forward with
`scorer="naive"`). `update_weights` copies HF-named tensors (from a trainer, in memory) into the
live model and `load_weights` an HF safetensors dir; both clear the store. Code that changes `engine.model`'s weights in place must call `engine.store.clear()`.

    engine = create_engine("hf", model="path/to/hf_dir", threads=2)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ra3_megatron.errors import InputError
from ra3_megatron.rollout.base import (
    Completion,
    EngineCapabilities,
    NamedTensors,
    RolloutEngineBase,
    SamplingConfig,
    ScoreGroup,
    per_prompt,
)
from ra3_megatron.rollout.common import engine_call, prompt_ids, split_overrides
from ra3_megatron.rollout.hf_sampling import probe_logprobs, sample_batched, sample_rows, sequence_logprobs
from ra3_megatron.rollout.kv_store import PrefixKVStore
from ra3_megatron.rollout.onednn import onednn_linears
from ra3_megatron.rollout.prefix_scorer import ScorerConfig, score_groups_naive, score_groups_prefix_cache


@dataclass(frozen=True, kw_only=True)
class HFEngineConfig:
    dtype: str = "float32"  # bf16 is not faster on CPU and moves scores by up to ~0.2 nats
    device: str = "auto"  # "auto": cuda when available, else cpu
    threads: int | None = None  # torch intra-op threads (CPU); None leaves torch's setting
    scorer: str = "prefix-cache"  # | "naive"
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
    seed: int = 0  # sampling stream for requests without a seed


class HFEngine(RolloutEngineBase):
    @property
    def capabilities(self) -> EngineCapabilities:
        # In float32 its log-probs are a float32 trainer's on the same weights (to rounding): the
        # E-step's RL may then take its PPO old log-probs from here (EStepConfig.old_logprobs).
        return EngineCapabilities(in_memory_weights=True, probe_in_one_pass=True, chain_in_one_pass=True,
                                  trainer_exact_logprobs=self.model.dtype == torch.float32)

    @engine_call  # built, like every engine call, without Megatron's CPU device mode
    def __init__(self, model: str | Path, config: HFEngineConfig | None = None, **overrides):
        self.config = cfg = split_overrides(HFEngineConfig, config, overrides)
        if cfg.scorer not in ("prefix-cache", "naive"):
            raise ValueError(f"HFEngine: unknown scorer {cfg.scorer!r} (prefix-cache | naive)")
        if cfg.score_matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"HFEngine: score_matmul_dtype must be float32 or bfloat16, not {cfg.score_matmul_dtype!r}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model_path = str(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, cfg.dtype))
        self.model.to(device).eval()
        self._gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.reload_seconds: list[float] = []  # one entry per load_weights call
        self.store = PrefixKVStore(cfg.prefix_store_mb << 20) if cfg.prefix_store_mb > 0 else None

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
                    gens = [self._gen if configs[i].seed is None else torch.Generator().manual_seed(configs[i].seed)
                            for i in chunk]
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
        with torch.inference_mode(), onednn_linears(self.model, self.config.onednn):
            return probe_logprobs(self.model, ids, positions, tokens, self.store)

    @engine_call
    def sequence_logprobs(self, ids: Sequence[int], start: int) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= start, from one pass: the E-step's `<act>` scores."""
        dtype = getattr(torch, self.config.score_matmul_dtype)
        with torch.inference_mode(), onednn_linears(self.model, self.config.onednn, dtype):
            return sequence_logprobs(self.model, ids, start, self.store, matmul_dtype=dtype)

    def _pick(self, logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
        """One token per row of logits, all drawn from `gen` (hf_sampling.sample_rows)."""
        return sample_rows(logits, cfg, [gen], [0] * logits.shape[0])

    # -- scoring ----------------------------------------------------------------------------
    @engine_call
    def score_groups(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        if self.config.scorer == "naive":
            return score_groups_naive(self.model, groups)
        scfg = ScorerConfig(max_batch_tokens=self.config.max_batch_tokens, onednn=self.config.onednn,
                            matmul_dtype=self.config.score_matmul_dtype)
        return score_groups_prefix_cache(self.model, groups, scfg, store=self.store)

    # -- weights ----------------------------------------------------------------------------
    @engine_call
    def load_weights(self, hf_dir: str) -> None:
        t0 = time.perf_counter()
        load_state_dict_from_dir(self.model, hf_dir)
        if self.store is not None:
            self.store.clear()  # K/V computed with the old weights
        self.reload_seconds.append(time.perf_counter() - t0)

    @engine_call
    def update_weights(self, weights: NamedTensors) -> None:
        t0 = time.perf_counter()
        copy_named_weights(self.model, weights, source="update_weights")
        if self.store is not None:
            self.store.clear()
        self.reload_seconds.append(time.perf_counter() - t0)

    def close(self) -> None:
        self.model = None


def copy_named_weights(model, weights: NamedTensors, *, source: str) -> None:
    """Copy HF-named tensors into `model`'s parameters in place (dtype and device converted);
    every parameter must be given once (a tied output layer may be left out), none unknown."""
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied head under both names
    buffers = dict(model.named_buffers())
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    seen, unexpected = set(), []
    with torch.no_grad():
        for name, tensor in weights:
            target = params.get(name, buffers.get(name))
            if target is None:
                unexpected.append(name)
                continue
            if tuple(target.shape) != tuple(tensor.shape):
                raise InputError(source, f"{name}: shape {tuple(tensor.shape)}, the model has {tuple(target.shape)}")
            target.copy_(tensor)
            seen.add(name)
    missing = sorted(set(params) - seen - tied)
    if missing or unexpected:
        raise InputError(source, f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_state_dict_from_dir(model, hf_dir: str | Path) -> None:
    """Copy the safetensors weights of an HF checkpoint dir into `model` in place."""
    from safetensors import safe_open

    d = Path(hf_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise InputError(str(d), "no *.safetensors weights in this directory")
    index = d / "model.safetensors.index.json"
    if index.exists():  # sharded: read only the shards the index names
        files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})

    def tensors():
        for f in files:
            with safe_open(str(f), framework="pt") as shard:
                for name in shard.keys():
                    yield name, shard.get_tensor(name)

    copy_named_weights(model, tensors(), source=str(d))
