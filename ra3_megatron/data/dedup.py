"""Exact deduplication of snippets by a content hash (BLAKE2b-128 of the UTF-8 bytes, no normalization).

    dedup = Deduper()
    keep = [s for s in snippets if dedup.add(s)]   # first occurrence wins; dedup.dropped counts the rest

Exact means byte-exact: two snippets that differ only in whitespace or comments are both kept.
16-byte digests keep memory at ~100 bytes per distinct snippet (a few hundred MB for 3.5M snippets).
"""

from __future__ import annotations

import hashlib

__all__ = ["content_hash", "Deduper"]


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Deduper:
    """Remembers the hashes seen; `add(text)` is True for a new text, False for a duplicate."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.kept = 0
        self.dropped = 0

    def add(self, text: str) -> bool:
        digest = content_hash(text)
        if digest in self._seen:
            self.dropped += 1
            return False
        self._seen.add(digest)
        self.kept += 1
        return True
