"""The prefix K/V store: longest-prefix lookup, LRU eviction by bytes, discard and clear."""

from __future__ import annotations

import pytest

from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")


def kv(length: int, layers: int = 2):
    return [(torch.zeros(1, length, 4), torch.zeros(1, length, 4)) for _ in range(layers)]


def test_lookup_finds_the_longest_stored_prefix():
    store = PrefixKVStore(1 << 20)
    store.put((1, 2), kv(2))
    store.put((1, 2, 3, 4), kv(4))
    store.put((9,), kv(1))
    key, found = store.lookup((1, 2, 3, 4, 5))
    assert key == (1, 2, 3, 4) and found[0][0].shape[1] == 4
    assert store.lookup((1, 2, 3))[0] == (1, 2)
    assert store.lookup((1, 2))[0] == (1, 2)  # a whole-sequence match counts
    assert store.lookup((2, 1)) is None and store.lookup(()) is None


def test_eviction_is_least_recently_used_and_bounded_in_bytes():
    one = 2 * 2 * 4 * 4 * 3  # layers * (k, v) * 4 floats * 4 bytes * 3 tokens
    store = PrefixKVStore(2 * one)
    store.put((1, 1, 1), kv(3))
    store.put((2, 2, 2), kv(3))
    store.lookup((1, 1, 1, 7))  # touch: (2, 2, 2) is now the oldest
    store.put((3, 3, 3), kv(3))
    assert len(store) == 2 and store.bytes == 2 * one
    assert store.lookup((2, 2, 2)) is None and store.lookup((1, 1, 1)) is not None
    store.put((4,) * 100, kv(100))  # larger than the whole budget: not kept, nothing evicted
    assert len(store) == 2
    store.discard((1, 1, 1))
    assert store.bytes == one
    store.put((3, 3, 3), kv(3))  # replacing an entry does not double-count it
    assert store.bytes == one
    store.clear()
    assert len(store) == 0 and store.bytes == 0


def test_longest_common_finds_the_entry_sharing_most_leading_tokens():
    store = PrefixKVStore(1 << 20)
    store.put((1, 2, 3, 4, 5, 6), kv(6))  # longer than the query: still usable up to the fork
    store.put((1, 2, 9), kv(3))
    store.put((7, 8), kv(2))
    n, found, key = store.longest_common((1, 2, 3, 4, 0))
    assert n == 4 and found[0][0].shape[1] == 6 and key == (1, 2, 3, 4, 5, 6)
    assert store.longest_common((1, 2, 9, 9))[0] == 3
    assert store.longest_common((1, 2))[0] == 2
    assert store.longest_common((5, 1)) is None and store.longest_common(()) is None


def test_longest_common_agrees_with_a_brute_force_scan_through_puts_evictions_and_discards():
    """The first-tokens index must never hide the best entry: random walks that share long
    headers (like files that start with the same licence), forks before and after the index
    length, short keys, evictions and discards, checked against a scan of every entry."""
    import random

    from ra3_megatron.rollout.cpu_accel.kv_store import BUCKET, common_length

    rng = random.Random(0)
    header = tuple(rng.randrange(4) for _ in range(BUCKET + 3))
    store = PrefixKVStore(2 * 4 * 4 * 4 * 400)  # room for about 400 tokens of K/V
    for _ in range(400):
        cut = rng.choice((0, 2, BUCKET - 1, BUCKET, len(header)))
        tokens = header[:cut] + tuple(rng.randrange(4) for _ in range(rng.randrange(1, 30)))
        op = rng.random()
        if op < 0.5:
            store.put(tokens, kv(len(tokens), layers=1))
        elif op < 0.6 and len(store):
            store.discard(rng.choice(list(store._entries)))
        else:
            want = max((common_length(k, tokens) for k in store._entries), default=0)
            got = store.longest_common(tokens)
            assert (got[0] if got else 0) == want
            if got:
                assert got[2][: got[0]] == tokens[: got[0]]
    assert sum(len(b) for b in store._buckets.values()) == len(store)
    assert common_length((1, 2, 3), (1, 2, 3)) == 3 and common_length((1, 2, 3), (1, 5)) == 1
