"""Held-out split by file: every snippet of one origin (source file) lands in the same split.

The decision is a deterministic hash of the origin, so it does not depend on input order, worker
count or what else is in the corpus: `u = BLAKE2b-64(salt + origin) / 2**64`, held out when
`u < fraction`. With `fraction = 0` there is no split and one output prefix. A small corpus may
hold out no file at all (the summary says so).
"""

from __future__ import annotations

import hashlib

__all__ = ["holdout_score", "is_heldout", "split_prefixes"]


def holdout_score(origin: str, salt: str = "") -> float:
    """A uniform-looking number in [0, 1) fixed by the origin."""
    digest = hashlib.blake2b((salt + origin).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(origin: str, fraction: float, salt: str = "") -> bool:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    return fraction > 0 and holdout_score(origin, salt) < fraction


def split_prefixes(prefix: str, fraction: float) -> dict[str, str]:
    """Output prefix per split: {"train": PREFIX} when fraction is 0, else PREFIX_train / PREFIX_valid."""
    if fraction <= 0:
        return {"train": prefix}
    return {"train": f"{prefix}_train", "valid": f"{prefix}_valid"}
