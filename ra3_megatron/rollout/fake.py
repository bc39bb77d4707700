"""A deterministic fake rollout engine: a tiny, documented language model for fast unit tests.

The model, over any tokenizer (a byte tokenizer by default; V = vocabulary size), given the
context h = h_1..h_k and a = h_k (a = -1 for an empty context):

    p(x | h)     = (1 - lam) * p_big(x | a) + lam * p_copy(x | h)     lam = copy_weight, or 0 when
                                                                      a was never followed in h
    p_big(x | a) = (w(a,x) C[a][x] + alpha) / (sum_y w(a,y) C[a][y] + alpha V)
    p_copy(x | h)= w(a,x) A[x] / sum_y w(a,y) A[y],   A[x] = #{i < k : h_i = a, h_{i+1} = x}
    w(a, x)      = 1 + jitter * u(seed, a, x),  u in [0, 1) a fixed integer hash

C are bigram counts of the `corpus` texts (none: p_big is uniform). The copy term is an
"induction head": text that occurred earlier in the context tends to be repeated. That is the
planted signal for E-step tests: a thought that contains the next lines raises their likelihood.
`seed` plays the part of the weights: `load_weights(dir)` reads `fake_lm.json` there (written by
`save_weights`) or else derives the seed from a hash of the dir's *.safetensors bytes, so new
weights give new, reproducible scores. Sampling is exact (temperature, greedy at 0; top-p keeps
the most likely tokens and treats the never-seen tokens, which share the smallest probability, as
one block) and seeded per prompt like vLLM. Returned log-probs are those of p (temperature 1).

    engine = create_engine("fake", corpus=["def f(x):\\n    return x\\n"], copy_weight=0.5)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
from ra3_megatron.rollout.byte_tokenizer import ByteTokenizer
from ra3_megatron.rollout.common import cut_at_stop, prompt_ids, split_overrides

_MASK = (1 << 64) - 1


@dataclass(frozen=True, kw_only=True)
class FakeConfig:
    tokenizer: str | None = None  # HF tokenizer dir; None: ByteTokenizer
    corpus: tuple[str, ...] = ()  # texts whose bigram counts make p_big
    alpha: float = 0.1
    copy_weight: float = 0.5
    jitter: float = 0.5
    seed: int = 0  # "the weights": changes w(a, x)
    sample_seed: int = 0  # sampling stream for requests without a seed


def _hash_unit(seed: int, a: int, x: int) -> float:
    z = (seed * 0x9E3779B97F4A7C15 + (a + 1) * 0xBF58476D1CE4E5B9 + x * 0x94D049BB133111EB) & _MASK
    z = ((z ^ (z >> 31)) * 0xD6E8FEB86659FD93) & _MASK
    return ((z ^ (z >> 32)) & 0xFFFFFFFF) / 2**32


class _Context:
    """Follower counts A of one context, as an overlay on a parent (a shared prefix)."""

    def __init__(self, parent: _Context | None = None):
        self.parent, self.counts, self.totals = parent, defaultdict(Counter), defaultdict(float)
        self.last = parent.last if parent else -1

    def followers(self, a: int) -> Counter:
        own = self.counts.get(a)
        base = self.parent.followers(a) if self.parent else Counter()
        return base + own if own else base

    def total(self, a: int) -> float:
        return self.totals.get(a, 0.0) + (self.parent.total(a) if self.parent else 0.0)


class FakeEngine(RolloutEngineBase):
    capabilities = EngineCapabilities(in_memory_weights=True)

    def __init__(self, config: FakeConfig | None = None, **overrides):
        if isinstance(overrides.get("corpus"), list):
            overrides["corpus"] = tuple(overrides["corpus"])
        self.config = cfg = split_overrides(FakeConfig, config, overrides)
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        else:
            self.tokenizer = ByteTokenizer()
        self.V = len(self.tokenizer)
        self.bigram: dict[int, Counter] = defaultdict(Counter)
        for text in cfg.corpus:
            ids = [-1] + list(self.tokenizer.encode(text, add_special_tokens=False))
            for a, x in zip(ids, ids[1:]):
                self.bigram[a][x] += 1
        self._rng = random.Random(cfg.sample_seed)
        self._zb: dict[int, float] = {}
        self.reload_seconds: list[float] = []

    # -- the model ----------------------------------------------------------------------------
    def _w(self, a: int, x: int) -> float:
        return 1.0 + self.config.jitter * _hash_unit(self.config.seed, a, x)

    def _z_big(self, a: int) -> float:
        if a not in self._zb:
            self._zb[a] = (
                sum(self._w(a, y) * c for y, c in self.bigram.get(a, {}).items()) + self.config.alpha * self.V
            )
        return self._zb[a]

    def _prob(self, ctx: _Context, x: int) -> float:
        a, cfg = ctx.last, self.config
        p = (self._w(a, x) * self.bigram.get(a, {}).get(x, 0) + cfg.alpha) / self._z_big(a)
        total = ctx.total(a)
        if total > 0:
            p = (1 - cfg.copy_weight) * p + cfg.copy_weight * self._w(a, x) * ctx.followers(a)[x] / total
        return p

    def _push(self, ctx: _Context, x: int) -> None:
        if ctx.last >= 0:
            ctx.counts[ctx.last][x] += 1
            ctx.totals[ctx.last] += self._w(ctx.last, x)
        ctx.last = x

    def _context(self, ids: Sequence[int], parent: _Context | None = None) -> _Context:
        ctx = _Context(parent)
        for x in ids:
            self._push(ctx, x)
        return ctx

    def distribution(self, ctx: _Context) -> tuple[dict[int, float], float]:
        """(probabilities of the tokens seen after ctx.last, the probability each other token has)."""
        a, cfg = ctx.last, self.config
        seen = set(self.bigram.get(a, {})) | set(ctx.followers(a))
        lam = cfg.copy_weight if ctx.total(a) > 0 else 0.0
        return {x: self._prob(ctx, x) for x in sorted(seen)}, (1 - lam) * cfg.alpha / self._z_big(a)

    # -- sampling -----------------------------------------------------------------------------
    def _pick(self, ctx: _Context, cfg: SamplingConfig, rng: random.Random) -> int:
        probs, floor = self.distribution(ctx)
        n_floor = self.V - len(probs)
        if cfg.temperature <= 0:
            best = max(probs.items(), key=lambda kv: (kv[1], -kv[0]), default=(None, -1.0))
            if best[1] >= floor or n_floor == 0:
                return best[0]
            return next(i for i in range(self.V) if i not in probs)
        items = sorted(probs.items(), key=lambda kv: (-kv[1], kv[0]))
        if cfg.top_p < 1.0:
            kept, cum = [], 0.0
            for x, p in items:
                if cum >= cfg.top_p:
                    break
                kept.append((x, p))
                cum += p
            items, n_floor = kept, (n_floor if cum < cfg.top_p else 0)
        inv_t = 1.0 / cfg.temperature
        weights = [p**inv_t for _, p in items]
        floor_w = n_floor * floor**inv_t if n_floor else 0.0
        r = rng.random() * (sum(weights) + floor_w)
        for (x, _), w in zip(items, weights):
            if r < w:
                return x
            r -= w
        if not n_floor:
            return items[-1][0]
        k = min(int(r / floor**inv_t), n_floor - 1)  # the k-th token outside the seen set, by id
        for x in range(self.V):
            if x not in probs:
                if k == 0:
                    return x
                k -= 1
        raise AssertionError("unreachable")

    def generate(
        self, prompts: Sequence[str | Sequence[int]], config: SamplingConfig | Sequence[SamplingConfig]
    ) -> list[list[Completion]]:
        eos, out = self.tokenizer.eos_token_id, []
        for p, cfg in zip(prompts, per_prompt(config, len(prompts))):
            prompt = self._context(prompt_ids(self.tokenizer, p))
            rng = self._rng if cfg.seed is None else random.Random(cfg.seed)
            comps = []
            for _ in range(cfg.n):
                ctx, toks, lps, text, stopped = _Context(prompt), [], [], "", False
                for _ in range(cfg.max_tokens):
                    x = self._pick(ctx, cfg, rng)
                    toks.append(x)
                    lps.append(math.log(self._prob(ctx, x)))
                    self._push(ctx, x)
                    text, stopped = cut_at_stop(
                        self.tokenizer.decode(toks, skip_special_tokens=True), cfg.stop
                    )
                    if stopped or x == eos:
                        stopped = True
                        break
                comps.append(
                    Completion(
                        text=text,
                        token_ids=tuple(toks),
                        logprobs=tuple(lps) if cfg.logprobs else None,
                        finish_reason="stop" if stopped else "length",
                    )
                )
            out.append(comps)
        return out

    # -- scoring ------------------------------------------------------------------------------
    def score_groups(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        out = []
        for gi, g in enumerate(groups):
            prefix, per = self._context(g.prefix), []
            for oi, o in enumerate(g.options):
                if o.target and not g.prefix and not o.middle:
                    raise ValueError(f"score_groups: group {gi} option {oi} has no context before its target")
                ctx, lps = self._context(o.middle, prefix), []
                for x in o.target:
                    lps.append(math.log(self._prob(ctx, x)))
                    self._push(ctx, x)
                per.append(lps)
            out.append(per)
        return out

    # -- weights ------------------------------------------------------------------------------
    def save_weights(self, out_dir: str | Path) -> Path:
        """Write the model parameters (not the corpus or tokenizer) as `fake_lm.json`."""
        keys = ("alpha", "copy_weight", "jitter", "seed")
        path = Path(out_dir) / "fake_lm.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({k: v for k, v in asdict(self.config).items() if k in keys}, sort_keys=True)
        )
        return path

    def load_weights(self, hf_dir: str) -> None:
        t0, d = time.perf_counter(), Path(hf_dir)
        if (d / "fake_lm.json").exists():
            try:
                params = json.loads((d / "fake_lm.json").read_text())
                new = replace(
                    self.config, **{k: params[k] for k in ("alpha", "copy_weight", "jitter", "seed")}
                )
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(str(d / "fake_lm.json"), f"not a fake model file ({e})") from None
        else:
            files = sorted(d.glob("*.safetensors"))
            if not files:
                raise InputError(str(d), "no fake_lm.json or *.safetensors weights in this directory")
            h = hashlib.sha256()
            for f in files:
                with open(f, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(block)
            new = replace(self.config, seed=int.from_bytes(h.digest()[:8], "little"))
        self.config, self._zb = new, {}
        self.reload_seconds.append(time.perf_counter() - t0)

    def update_weights(self, weights: NamedTensors) -> None:
        """In-memory weights play the seed too: a hash of the tensors' names and bytes, in name
        order (a trainer's weights in memory and its exported folder give different seeds)."""
        t0, h = time.perf_counter(), hashlib.sha256()
        for name, tensor in sorted(weights, key=lambda item: item[0]):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_uint8()).numpy().tobytes())
        self.config, self._zb = replace(self.config, seed=int.from_bytes(h.digest()[:8], "little")), {}
        self.reload_seconds.append(time.perf_counter() - t0)


def _uint8():
    import torch

    return torch.uint8
