"""The training records of each arm, built from the RA3 arm's E-step output.

All arms hold the same snippets (the E-step's, in its order), so they train on the same code:
- ntp: no thoughts;
- shuffled: each snippet's thoughts, same texts and count, at random candidate lines of the
  same snippet (drawn per snippet from a generator seeded by (seed, snippet id));
- null: `null_text` at exactly RA3's lines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ra3_megatron.core.latent import InfusedSnippet, Thought
from ra3_megatron.data.records import manifest_shards
from ra3_megatron.errors import InputError
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.thinking import candidate_lines
from ra3_megatron.files import atomic_write_text


def read_infused(estep_dir: str | Path) -> list[InfusedSnippet]:
    """The records of an E-step output dir (its manifest's shards, in order)."""
    out = []
    for shard, _ in manifest_shards(Path(estep_dir)):
        with open(shard, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(InfusedSnippet.from_record(json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise InputError(shard, f"line {number}: {exc}") from None
    return out


def ntp_records(snippets: Sequence[InfusedSnippet]) -> Iterator[InfusedSnippet]:
    for s in snippets:
        yield InfusedSnippet(id=s.id, text=s.text)


def null_records(snippets: Sequence[InfusedSnippet], text: str) -> Iterator[InfusedSnippet]:
    for s in snippets:
        yield InfusedSnippet(id=s.id, text=s.text, thoughts=tuple(Thought(line=t.line, text=text) for t in s.thoughts))


def shuffled_records(snippets: Sequence[InfusedSnippet], cfg: EStepConfig, seed: int) -> Iterator[InfusedSnippet]:
    for s in snippets:
        if not s.thoughts:
            yield s
            continue
        digest = hashlib.sha256(f"{seed}\x00shuffle\x00{s.id}".encode()).digest()
        rng = np.random.default_rng(list(np.frombuffer(digest[:16], dtype=np.uint32)))
        lines = candidate_lines(s.text, cfg)
        # RA3 only put thoughts at candidate lines, so there are at least as many as thoughts.
        k = min(len(s.thoughts), len(lines))
        picked = sorted(int(x) for x in rng.choice(lines, size=k, replace=False))
        texts = [t.text for t in s.thoughts][:k]
        rng.shuffle(texts)
        yield InfusedSnippet(id=s.id, text=s.text, thoughts=tuple(Thought(line=a, text=b) for a, b in zip(picked, texts)))


def write_records(path: Path, snippets: Iterator[InfusedSnippet]) -> tuple[int, int]:
    """jsonl of the records (what `ra3 prepare` reads); returns (snippets, thoughts)."""
    rows, thoughts = [], 0
    for s in snippets:
        rows.append(json.dumps(s.to_record(), ensure_ascii=False))
        thoughts += len(s.thoughts)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(rows) + "\n")
    return len(rows), thoughts


def arm_records(arm: str, snippets: Sequence[InfusedSnippet], cfg: EStepConfig, *, seed: int,
                null_text: str) -> Iterator[InfusedSnippet]:
    if arm == "ntp":
        return ntp_records(snippets)
    if arm == "shuffled":
        return shuffled_records(snippets, cfg, seed)
    if arm == "null":
        return null_records(snippets, null_text)
    raise ValueError(f"arm {arm!r} is not built from records")
