"""Paired differences with bootstrap intervals, resampling files.

Held-out CE is pooled over tokens (sum of NLL / sum of tokens), so a difference between two arms
is the difference of pooled CEs on the same snippets. Snippets cut from one file are not
independent (same author, names, style), so intervals resample files: each file's NLL and token
sums stay together, and each pair of arms stays together. pass@1 differences resample tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def file_of(snippet_id: str) -> str:
    """The file a snippet was cut from (snippet ids are "<document id>#<chunk>")."""
    return snippet_id.rsplit("#", 1)[0]


def _by_unit(values: Sequence[float], units: Sequence[str] | None) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if units is None:
        return v
    names = sorted(set(units))
    index = {u: i for i, u in enumerate(names)}
    out = np.zeros(len(names))
    np.add.at(out, [index[u] for u in units], v)
    return out


def _interval(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def pooled_ce_interval(nll: Sequence[float], tokens: Sequence[int], *, resamples: int, seed: int,
                       units: Sequence[str] | None = None) -> dict:
    """Pooled CE of one arm, with a bootstrap 95% interval over `units` (e.g. files; default:
    each entry)."""
    a, tok = _by_unit(nll, units), _by_unit(tokens, units)
    if tok.sum() == 0:
        return {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": len(a)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    boot = a[idx].sum(1) / np.maximum(tok[idx].sum(1), 1)
    return {"mean": float(a.sum() / tok.sum()), "ci95": _interval(boot), "n": len(a)}


def paired_ce_diff(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int], *, resamples: int,
                   seed: int, units: Sequence[str] | None = None) -> dict:
    """CE(a) - CE(b) on the same snippets (same code tokens), bootstrap 95% interval over `units`
    (files); `share_a_better`: the share of units where a's CE is lower; `n`: units."""
    if len(nll_a) != len(nll_b) or len(nll_a) != len(tokens):
        raise ValueError("paired differences need the same snippets in both arms")
    a, b, tok = _by_unit(nll_a, units), _by_unit(nll_b, units), _by_unit(tokens, units)
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
