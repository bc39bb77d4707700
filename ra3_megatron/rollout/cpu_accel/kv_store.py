"""A store of prefix KV caches kept between scoring calls (an LRU bounded in bytes).

The E-step walks each snippet left to right: the prefix scored at line t+1 is the prefix at t
plus the chosen option and line t. Keeping each group's prefix K/V after a call lets the next
call compute only the new tokens: without it, the whole prefix (thousands of tokens late in a
long snippet) runs again at every line. An entry is one prefix's per-layer (K, V), each
[kv_heads, length, head_dim]; lookup finds the longest stored prefix of a token sequence.

The store belongs to one set of weights: whoever loads new weights must `clear()` it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ra3_megatron.rollout.common import common_length

KV = list[tuple[object, object]]  # per layer (keys, values), torch tensors

# Entries are indexed by their first BUCKET tokens: a lookup compares only the entries that share
# them (one snippet's walk) instead of every entry in the store, and falls back to a full scan
# when none does. Why it matters: the E-step looks the store up thousands of times over stores
# of thousands of entries, and a linear scan of token tuples then costs seconds.
BUCKET = 8


class PrefixKVStore:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[KV, int]] = OrderedDict()
        self._buckets: dict[tuple[int, ...], set[tuple[int, ...]]] = {}  # key[:BUCKET] -> keys
        self.bytes = 0
        self.hits = 0  # lookups that found a stored prefix
        self.reused_tokens = 0  # prefix tokens not recomputed thanks to the store

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int]) -> tuple[tuple[int, ...], KV] | None:
        """The longest stored prefix of `tokens` (possibly all of it) and its K/V, or None."""
        tokens = tuple(tokens)
        best = None
        for key in self._entries:
            if (
                len(key) <= len(tokens)
                and (best is None or len(key) > len(best))
                and tokens[: len(key)] == key
            ):
                best = key
        if best is None:
            return None
        self._entries.move_to_end(best)
        return best, self._entries[best][0]

    def longest_common(self, tokens: Sequence[int]) -> tuple[int, KV, tuple[int, ...]] | None:
        """(n, K/V, key) of the entry sharing the most leading tokens with `tokens` (n >= 1), or
        None. The K/V is the whole entry's: its first n positions are those of tokens[:n]."""
        tokens = tuple(tokens)
        if not tokens:
            return None
        # An entry sharing BUCKET tokens beats every entry that shares fewer, so the bucket decides
        # whenever it holds one; otherwise the scan finds the (short) best match anywhere.
        bucket = self._buckets.get(tokens[:BUCKET]) if len(tokens) >= BUCKET else None
        best_n, best = 0, None
        for key in bucket or self._entries:
            if not key or key[0] != tokens[0] or min(len(key), len(tokens)) <= best_n:
                continue
            n = common_length(key, tokens)
            if n > best_n:
                best_n, best = n, key
        if best is None:
            return None
        self._entries.move_to_end(best)
        return best_n, self._entries[best][0], best

    def put(self, tokens: Sequence[int], kv: KV) -> None:
        key = tuple(tokens)
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.max_bytes:
            return
        self.discard(key)
        self._entries[key] = (kv, size)
        self._buckets.setdefault(key[:BUCKET], set()).add(key)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.discard(next(iter(self._entries)))  # least recently used

    def discard(self, tokens: Sequence[int]) -> None:
        key = tuple(tokens)
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]
            bucket = self._buckets[key[:BUCKET]]
            bucket.discard(key)
            if not bucket:
                del self._buckets[key[:BUCKET]]

    def clear(self) -> None:
        self._entries.clear()
        self._buckets.clear()
        self.bytes = 0
