"""Paired differences with bootstrap intervals.

Held-out CE is pooled over tokens (sum of NLL / sum of tokens), so a difference between two arms
is the difference of pooled CEs on the same snippets; its interval resamples snippets (the unit
that is independent) with replacement, keeping each snippet's pair together. pass@1 differences
resample tasks the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _interval(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def pooled_ce_interval(nll: Sequence[float], tokens: Sequence[int], *, resamples: int, seed: int) -> dict:
    """Pooled CE of one arm, with a bootstrap 95% interval over snippets."""
    nll_a, tok = np.asarray(nll, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    if tok.sum() == 0:
        return {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": len(nll_a)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(nll_a), size=(resamples, len(nll_a)))
    boot = nll_a[idx].sum(1) / np.maximum(tok[idx].sum(1), 1)
    return {"mean": float(nll_a.sum() / tok.sum()), "ci95": _interval(boot), "n": len(nll_a)}


def paired_ce_diff(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int], *, resamples: int,
                   seed: int) -> dict:
    """CE(a) - CE(b) on the same snippets (same code tokens), bootstrap 95% interval over snippets;
    `share_a_better`: the share of snippets where a's CE is lower."""
    a, b = np.asarray(nll_a, dtype=np.float64), np.asarray(nll_b, dtype=np.float64)
    tok = np.asarray(tokens, dtype=np.float64)
    if len(a) != len(b) or len(a) != len(tok):
        raise ValueError("paired differences need the same snippets in both arms")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    boot = (a[idx] - b[idx]).sum(1) / np.maximum(tok[idx].sum(1), 1)
    per = (a - b) / np.maximum(tok, 1)
    return {"mean": float((a - b).sum() / max(tok.sum(), 1)), "ci95": _interval(boot), "n": len(a),
            "share_a_better": float((per < 0).mean()) if len(a) else float("nan")}


def paired_rate_diff(passed_a: Sequence[float], passed_b: Sequence[float], *, resamples: int, seed: int) -> dict:
    """pass@1(a) - pass@1(b) on the same tasks, bootstrap 95% interval over tasks."""
    a, b = np.asarray(passed_a, dtype=np.float64), np.asarray(passed_b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError("paired differences need the same tasks in both arms")
    if not len(a):
        return {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    return {"mean": float((a - b).mean()), "ci95": _interval((a[idx] - b[idx]).mean(1)), "n": len(a)}
