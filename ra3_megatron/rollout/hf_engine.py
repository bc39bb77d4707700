"""The transformers rollout backend: the reference every other engine is tested against.

Plain forward passes through transformers' public API, nothing cached between calls, so each
answer can be read off the model's definition:
- `generate`: per prompt, one prefill and a KV-cached decode loop over its n rows
  (`transformers.DynamicCache`), drawing from a generator of its own (seeded per prompt like vLLM:
  the same prompt with the same seed gives the same samples whatever else is in the call);
- `score_groups`: each option's whole sequence (prefix + middle + target) in padded batches, the
  target's log-probs read from the logits;
- `token_logprobs_at` / `sequence_logprobs`: the E-step's decision probes and `<act>` chain, one
  forward over the sequence each.
Returned log-probs are the raw model's (before temperature / top-p), as vLLM's default
`raw_logprobs`. `update_weights` copies HF-named tensors (a trainer's, in memory) into the model,
`load_weights` an HF safetensors folder.

The same contract, with prefix K/V reuse and packed kernels for CPU runs, is the opt-in
`hf-cpu` backend (`rollout/cpu_accel`); GPU runs use `vllm`.

    engine = create_engine("hf", model="path/to/hf_dir", threads=2)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from ra3_megatron.errors import InputError
from ra3_megatron.rollout.base import (
    Completion,
    EngineCapabilities,
    NamedTensors,
    RolloutEngineBase,
    SamplingConfig,
    ScoreGroup,
    check_groups,
    per_prompt,
)
from ra3_megatron.rollout.common import cut_at_stop, engine_call, prompt_ids, split_overrides


@dataclass(frozen=True, kw_only=True)
class HFEngineConfig:
    dtype: str = "float32"  # bf16 is not faster on CPU and moves scores by up to ~0.2 nats
    device: str = "auto"  # "auto": cuda when available, else cpu
    threads: int | None = None  # torch intra-op threads (CPU); None leaves torch's setting
    score_rows: int = 8  # sequences per scoring forward
    seed: int = 0  # sampling stream for requests without a seed


class HFEngine(RolloutEngineBase):
    config_class: type = HFEngineConfig

    @property
    def capabilities(self) -> EngineCapabilities:
        # In float32 its log-probs are a float32 trainer's on the same weights (to rounding): the
        # E-step's RL may then take its PPO old log-probs from here (EStepConfig.old_logprobs).
        return EngineCapabilities(in_memory_weights=True, probe_in_one_pass=True, chain_in_one_pass=True,
                                  trainer_exact_logprobs=self.model.dtype == torch.float32)

    @engine_call  # built, like every engine call, without Megatron's CPU device mode
    def __init__(self, model: str | Path, config: HFEngineConfig | None = None, **overrides):
        self.config = cfg = split_overrides(self.config_class, config, overrides)
        self.check_config(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model_path = str(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, cfg.dtype))
        self.model.to(device).eval()
        self._gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.reload_seconds: list[float] = []  # one entry per weight change

    def check_config(self, cfg) -> None:
        """Refuse bad settings at start (subclasses add theirs)."""
        if cfg.score_rows < 1:
            raise ValueError(f"{type(self).__name__}: score_rows must be >= 1, not {cfg.score_rows}")

    def _generator(self, seed: int | None) -> torch.Generator:
        return self._gen if seed is None else torch.Generator().manual_seed(seed)

    # -- sampling ---------------------------------------------------------------------------
    @engine_call
    def generate(
        self, prompts: Sequence[str | Sequence[int]], config: SamplingConfig | Sequence[SamplingConfig]
    ) -> list[list[Completion]]:
        configs = per_prompt(config, len(prompts))
        with torch.inference_mode():
            return [self._sample(prompt_ids(self.tokenizer, p), c, self._generator(c.seed))
                    for p, c in zip(prompts, configs)]

    def _sample(self, ids: list[int], cfg: SamplingConfig, gen: torch.Generator) -> list[Completion]:
        """cfg.n completions of one prompt: one prefill, its K/V repeated for the n rows, then one
        decode step per token for all rows; a finished row draws nothing more."""
        cache = DynamicCache()
        out = self.model(input_ids=torch.tensor([ids], device=self.model.device), past_key_values=cache,
                         use_cache=True)
        cache.batch_repeat_interleave(cfg.n)
        logits = out.logits[:, -1].float().expand(cfg.n, -1)
        toks: list[list[int]] = [[] for _ in range(cfg.n)]
        lps: list[list[float]] = [[] for _ in range(cfg.n)]
        done = [False] * cfg.n
        eos = self.tokenizer.eos_token_id
        for _ in range(cfg.max_tokens):
            live = [r for r in range(cfg.n) if not done[r]]
            nxt = torch.zeros(cfg.n, dtype=torch.long, device=logits.device)
            nxt[live] = sample_rows(logits[live], cfg, [gen], [0] * len(live))
            logp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0].tolist()
            for r in live:
                t = int(nxt[r])
                toks[r].append(t)
                lps[r].append(logp[r])
                text = self.tokenizer.decode(toks[r], skip_special_tokens=True)
                done[r] = t == eos or cut_at_stop(text, cfg.stop)[1]
            if all(done):
                break
            out = self.model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1].float()
        return [
            Completion(text=cut_at_stop(self.tokenizer.decode(t, skip_special_tokens=True), cfg.stop)[0],
                       token_ids=tuple(t), logprobs=tuple(lp) if cfg.logprobs else None,
                       finish_reason="stop" if d else "length")
            for t, lp, d in zip(toks, lps, done)
        ]

    # -- log-probs --------------------------------------------------------------------------
    def _logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        """[len(ids), V]: row i is log p(. | ids[:i + 1])."""
        logits = self.model(input_ids=torch.tensor([list(ids)], device=self.model.device)).logits[0]
        return torch.log_softmax(logits.float(), -1)

    @engine_call
    def token_logprobs_at(self, ids: Sequence[int], positions: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """log p(tokens[i] | ids[:positions[i]]): the E-step's decision probes, one pass over ids."""
        if not check_probe(ids, positions, tokens):
            return []
        with torch.inference_mode():
            logp = self._logprobs(ids[: max(positions, default=1)])
        return [logp[p - 1, t].item() for p, t in zip(positions, tokens)]

    @engine_call
    def sequence_logprobs(self, ids: Sequence[int], start: int) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= start, one pass: the E-step's `<act>` scores."""
        if not 1 <= start <= len(ids):
            raise ValueError(f"sequence_logprobs: start must lie in [1, {len(ids)}], not {start}")
        with torch.inference_mode():
            logp = self._logprobs(ids)
        return [logp[i - 1, ids[i]].item() for i in range(start, len(ids))]

    @engine_call
    def score_groups(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        check_groups(groups)
        with torch.inference_mode():
            return score_padded(self.model, groups, self.config.score_rows)

    # -- weights ----------------------------------------------------------------------------
    @engine_call
    def load_weights(self, hf_dir: str) -> None:
        t0 = time.perf_counter()
        load_state_dict_from_dir(self.model, hf_dir)
        self.weights_changed()
        self.reload_seconds.append(time.perf_counter() - t0)

    @engine_call
    def update_weights(self, weights: NamedTensors) -> None:
        t0 = time.perf_counter()
        copy_named_weights(self.model, weights, source="update_weights")
        self.weights_changed()
        self.reload_seconds.append(time.perf_counter() - t0)

    def weights_changed(self) -> None:
        """Called after every weight change: nothing here is computed ahead (subclasses that keep
        K/V drop it)."""

    def close(self) -> None:
        self.model = None


def check_probe(ids: Sequence[int], positions: Sequence[int], tokens: Sequence[int]) -> bool:
    """Refuse a probe whose positions fall outside [1, len(ids)]; False when there is nothing to probe."""
    if len(positions) != len(tokens):
        raise ValueError(f"token_logprobs_at: {len(positions)} positions for {len(tokens)} tokens")
    bad = [p for p in positions if not 1 <= p <= len(ids)]
    if bad:
        raise ValueError(f"token_logprobs_at: positions {bad[:3]} outside [1, {len(ids)}] (a position p probes "
                         "the token after ids[:p])")
    return bool(positions)


def sample_rows(logits: torch.Tensor, cfg: SamplingConfig, gens: Sequence[torch.Generator],
                owners: Sequence[int]) -> torch.Tensor:
    """One token per row of [R, V] logits: inverse-CDF sampling, row r's uniform drawn from
    gens[owners[r]] (each generator gives its rows theirs in row order, so a prompt's draws do
    not depend on other prompts' rows). torch.multinomial would draw an exponential per
    vocabulary entry: ~0.2 ms a call on 8k entries, per prompt per decode step."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, idx, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.double().cumsum(-1)
    u = torch.empty(len(owners), dtype=torch.float64)
    rows_of: dict[int, list[int]] = {}
    for r, p in enumerate(owners):
        rows_of.setdefault(p, []).append(r)
    for p, rows in rows_of.items():
        u[rows] = torch.rand(len(rows), generator=gens[p], dtype=torch.float64)
    u = u.to(cdf.device)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def score_padded(model, groups: Sequence[ScoreGroup], rows: int = 8) -> list[list[list[float]]]:
    """Per group, per option, the target's log-probs: each option's full sequence, right-padded
    into batches of `rows`, one forward per batch."""
    seqs = [
        (list(g.prefix) + list(o.middle) + list(o.target), len(g.prefix) + len(o.middle), len(o.target))
        for g in groups
        for o in g.options
    ]
    flat: list[list[float]] = []
    dev = model.device
    for start in range(0, len(seqs), rows):
        chunk = seqs[start : start + rows]
        L = max(len(s) for s, _, _ in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
        mask = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
        for r, (s, _, _) in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s, device=dev)
            mask[r, : len(s)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for r, (_, first, n) in enumerate(chunk):
            pos = torch.arange(first - 1, first - 1 + n, device=dev)
            flat.append(logp[r, pos, ids[r, pos + 1]].tolist())
    scores, k = [], 0
    for g in groups:
        scores.append(flat[k : k + len(g.options)])
        k += len(g.options)
    return scores


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


def safetensors_files(hf_dir: str | Path) -> list[Path]:
    """The weight files of an HF checkpoint dir: the shards its index names, else every *.safetensors."""
    d = Path(hf_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise InputError(str(d), "no *.safetensors weights in this directory")
    index = d / "model.safetensors.index.json"
    if index.exists():  # sharded: read only the shards the index names
        files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
    return files


def load_state_dict_from_dir(model, hf_dir: str | Path) -> None:
    """Copy the safetensors weights of an HF checkpoint dir into `model` in place."""
    from safetensors import safe_open

    d = Path(hf_dir)
    files = safetensors_files(d)

    def tensors():
        for f in files:
            with safe_open(str(f), framework="pt") as shard:
                for name in shard.keys():
                    yield name, shard.get_tensor(name)

    copy_named_weights(model, tensors(), source=str(d))
