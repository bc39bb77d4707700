"""Helpers shared by the transformers-backend tests (`hf` reference and `hf-cpu` accelerator)."""

from __future__ import annotations

import random

from ra3_megatron.rollout import ScoreGroup, ScoreOption


def random_groups(seed: int, vocab: int, n_groups: int = 6) -> list[ScoreGroup]:
    rng = random.Random(seed)

    def toks(n):
        return tuple(rng.randrange(vocab) for _ in range(n))

    groups = []
    for _ in range(n_groups):
        opts = [ScoreOption(middle=(), target=toks(rng.randint(1, 12)))]
        opts += [
            ScoreOption(middle=toks(rng.randint(1, 7)), target=toks(rng.randint(0, 12)))
            for _ in range(rng.randint(0, 4))
        ]
        groups.append(ScoreGroup(prefix=toks(rng.randint(1, 40)), options=tuple(opts)))
    groups.append(
        ScoreGroup(prefix=(), options=(ScoreOption(middle=toks(3), target=toks(4)),))
    )  # naive fallback
    groups.append(ScoreGroup(prefix=toks(5), options=()))
    return groups


def one_by_one(model, groups):
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_one_by_one

    return score_groups_one_by_one(model, groups)


def max_diff(a, b):
    assert [[len(o) for o in g] for g in a] == [[len(o) for o in g] for g in b]
    return max(abs(x - y) for ga, gb in zip(a, b) for oa, ob in zip(ga, gb) for x, y in zip(oa, ob))


def same_samples(a, b, tol=1e-5) -> bool:
    """Equal samples; log-probs to float rounding (a prompt's prefill may start from stored K/V)."""
    return len(a) == len(b) and all(
        (x.text, x.token_ids, x.finish_reason) == (y.text, y.token_ids, y.finish_reason)
        and (x.logprobs is None) == (y.logprobs is None)
        and all(abs(u - v) <= tol for u, v in zip(x.logprobs or (), y.logprobs or ()))
        for x, y in zip(a, b)
    )
