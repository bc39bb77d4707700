"""Exact dedup by content hash and the held-out split by file."""

from __future__ import annotations

import pytest

from ra3_megatron.data.dedup import Deduper, content_hash
from ra3_megatron.data.split import holdout_score, is_heldout, split_prefixes

pytestmark = pytest.mark.unit


def test_dedup_is_exact_and_counts():
    dedup = Deduper()
    texts = ["a = 1\n", "a = 1\n", "a = 1\r\n", "a  = 1\n", "a = 1\n", "é\n"]
    assert [dedup.add(t) for t in texts] == [True, False, True, True, False, True]
    assert (dedup.kept, dedup.dropped) == (4, 2)
    assert content_hash("x") == content_hash("x") != content_hash("x ")
    assert len(content_hash("x")) == 16


def test_holdout_is_deterministic_by_origin_and_close_to_the_fraction():
    origins = [f"pkg/mod_{i}.py" for i in range(20_000)]
    held = [o for o in origins if is_heldout(o, 0.05)]
    assert 0.045 < len(held) / len(origins) < 0.055
    assert held == [o for o in reversed(origins) if is_heldout(o, 0.05)][::-1]  # order-free
    assert not any(is_heldout(o, 0.0) for o in origins)
    assert set(held) <= {o for o in origins if is_heldout(o, 0.2)}  # monotone in the fraction
    assert holdout_score("a", salt="1") != holdout_score("a")
    with pytest.raises(ValueError):
        is_heldout("a", 1.0)


def test_split_prefixes():
    assert split_prefixes("out/d", 0.0) == {"train": "out/d"}
    assert split_prefixes("out/d", 0.01) == {"train": "out/d_train", "valid": "out/d_valid"}
