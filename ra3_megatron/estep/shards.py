"""Crash-safe jsonl shards for the infusion pass: atomic shards, a done-set, a manifest.

Layout of an E-step output directory (rank r of W workers):

    part-r{r:03d}-{k:05d}.jsonl        completed shard k of rank r (records in stream order)
    part-r{r:03d}-{k:05d}.stats.json   its statistics (written before the shard is renamed)
    part-r{r:03d}-{k:05d}.jsonl.tmp    the shard being written (discarded on restart)
    rank-r{r:03d}.done.json            rank r finished: its shards, counts and statistics
    manifest.json                      all ranks finished: {"shards": [{"path", "records"}], ...}

A shard is written to `.tmp`, flushed, fsynced and renamed: a shard file either exists whole or
not at all. After a kill the rank reopens the directory, deletes its `.tmp`, reads the ids of
its completed shards (the done-set) and skips those snippets, so every snippet ends up in the
output exactly once. A shard whose stats file is missing is treated as not written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ra3_megatron.errors import InputError
from ra3_megatron.estep.stats import SearchStats, atomic_write_text

_SHARD = re.compile(r"^part-r(\d{3})-(\d{5})\.jsonl$")


def shard_name(rank: int, index: int) -> str:
    return f"part-r{rank:03d}-{index:05d}.jsonl"


def _stats_path(shard: Path) -> Path:
    return shard.with_name(shard.name[: -len(".jsonl")] + ".stats.json")


def completed_shards(out_dir: Path, rank: int | None = None) -> list[Path]:
    """Completed shards (of one rank, or all), sorted by rank then index."""
    found = []
    for p in out_dir.iterdir() if out_dir.is_dir() else ():
        m = _SHARD.match(p.name)
        if m and (rank is None or int(m.group(1)) == rank):
            found.append((int(m.group(1)), int(m.group(2)), p))
    return [p for _, _, p in sorted(found)]


class ShardWriter:
    """Appends infused records to rank `rank`'s shards; `resume()` first to get the done-set."""

    def __init__(self, out_dir: str | os.PathLike, *, rank: int = 0, shard_size: int = 1000):
        self.out = Path(out_dir)
        self.rank, self.shard_size = rank, shard_size
        self.out.mkdir(parents=True, exist_ok=True)
        self._file = None
        self._count = 0
        self._stats = SearchStats()
        self._next_index = 0
        self.done_stats = SearchStats()  # of the shards completed before this run and by it
        self.shards: list[Path] = []

    @property
    def open_stats(self) -> SearchStats:
        """Statistics of the shard being written (not yet committed)."""
        return self._stats

    def resume(self) -> set[str]:
        """Drop partial shards of this rank and return the ids already written."""
        for p in self.out.glob(f"part-r{self.rank:03d}-*.jsonl.tmp"):
            p.unlink()
        done: set[str] = set()
        for shard in completed_shards(self.out, self.rank):
            stats = _stats_path(shard)
            if not stats.is_file():  # killed between the stats file and the rename: redo the shard
                shard.unlink()
                continue
            for n, line in enumerate(shard.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    done.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise InputError(shard, f"corrupt E-step shard record ({exc})", line=n) from None
            self.done_stats.merge(SearchStats.from_dict(json.loads(stats.read_text(encoding="utf-8"))))
            self.shards.append(shard)
            self._next_index = int(_SHARD.match(shard.name).group(2)) + 1
        return done

    def _open(self) -> None:
        path = self.out / (shard_name(self.rank, self._next_index) + ".tmp")
        self._file = open(path, "w", encoding="utf-8")
        self._count = 0
        self._stats = SearchStats()

    def write(self, record: dict[str, Any], stats: SearchStats) -> None:
        if self._file is None:
            self._open()
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stats.merge(stats)
        self._count += 1
        if self._count >= self.shard_size:
            self.commit()

    def commit(self) -> None:
        """Finish the open shard: fsync, stats file, rename (the commit point)."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        tmp = Path(self._file.name)
        self._file = None
        final = tmp.with_name(tmp.name[: -len(".tmp")])
        atomic_write_text(_stats_path(final), json.dumps(self._stats.to_dict()) + "\n")
        os.replace(tmp, final)
        self.done_stats.merge(self._stats)
        self.shards.append(final)
        self._next_index += 1

    def close(self) -> None:
        self.commit()


def shard_records(shard: Path) -> int:
    with open(shard, "rb") as f:
        return sum(1 for _ in f)


def write_rank_done(out_dir: Path, rank: int, shards: Iterable[Path], stats: SearchStats,
                    extra: dict[str, Any]) -> None:
    entries = [{"path": p.name, "records": shard_records(p)} for p in shards]
    body = {"rank": rank, "shards": entries, "stats": stats.to_dict(), **extra}
    atomic_write_text(out_dir / f"rank-r{rank:03d}.done.json", json.dumps(body, indent=1) + "\n")


def try_write_manifest(out_dir: Path, world: int, extra: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest once every rank's done file exists (else None). Any rank may call it."""
    done = [out_dir / f"rank-r{r:03d}.done.json" for r in range(world)]
    if not all(p.is_file() for p in done):
        return None
    shards: list[dict[str, Any]] = []
    stats = SearchStats()
    for p in done:
        body = json.loads(p.read_text(encoding="utf-8"))
        shards += body["shards"]
        stats.merge(SearchStats.from_dict(body["stats"]))
    manifest = {"format": "ra3-infused-jsonl", "version": 1, "shards": shards,
                "records": sum(s["records"] for s in shards), "workers": world,
                "stats": stats.to_dict(), **extra}
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest
