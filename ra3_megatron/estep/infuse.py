"""The infusion pass: search every snippet of the corpus with the trained q and write the records.

Streams: documents are read one at a time (`data.readers.iter_documents`), chunked into snippets
(`data.chunking.chunk_snippets`), searched `batch_snippets` at a time and written to shards, so
memory holds one batch plus the done-set of ids, never the corpus. Sharded by snippet: worker r
of W takes the snippets whose stream index i has i % W == r. Resumable: see `estep.shards`.

Snippet ids: `{doc id}#{k}` for the k-th chunk of a document; a record that already was an E-step
snippet (it has a `thoughts` field) and stays one chunk keeps its id. Records hold the original
snippet text; thoughts in the input are dropped (the E-step infers its own).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ra3_megatron.estep.batch import run_searches
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.pieces import Codec
from ra3_megatron.estep.shards import ShardWriter
from ra3_megatron.estep.stats import SearchStats


def iter_snippets(path: str | Path, tokenizer, cfg: EStepConfig, report=None, **reader_opts) -> Iterator[tuple[str, str]]:
    """(snippet id, text) for every chunk of every document of `path`, in a deterministic order."""
    from ra3_megatron.data.chunking import chunk_snippets
    from ra3_megatron.data.readers import iter_documents

    if callable(tokenizer) or hasattr(tokenizer, "encode_batch"):  # HF fast / `tokenizers` tokenizer
        by = {"tokenizer": tokenizer}
    else:  # anything with encode() (the fake engine's byte tokenizer)
        by = {"count_tokens": lambda s: len(tokenizer.encode(s))}
    for doc in iter_documents(path, report=report, **reader_opts):
        chunks = chunk_snippets(doc.text, max_tokens=cfg.max_snippet_tokens, python=cfg.python, **by)
        if len(chunks) == 1 and doc.thoughts is not None:
            yield doc.id, chunks[0]
            continue
        for k, chunk in enumerate(chunks):
            if chunk.strip():
                yield f"{doc.id}#{k}", chunk


def infuse(
    snippets: Iterator[tuple[str, str]],
    out_dir: str | Path,
    *,
    sampler,
    scorer,
    cfg: EStepConfig,
    rank: int = 0,
    world: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search this rank's share of `snippets` and write them; resumes from completed shards.

    Returns {"stats": SearchStats of all of this rank's shards, "shards": [Path], "new": snippets
    searched in this run, "duplicates": ids seen twice in the input (skipped after the first),
    "seconds": this run's time per kind of engine call and in the searches themselves}.
    """
    writer = ShardWriter(out_dir, rank=rank, shard_size=cfg.shard_size)
    done = writer.resume()
    codec = Codec(sampler.tokenizer)
    stream = itertools.islice(snippets, limit) if limit is not None else snippets
    mine = ((sid, text) for i, (sid, text) in enumerate(stream) if i % world == rank)
    seen: set[str] = set(done)
    duplicates = 0
    new = 0
    bar = _progress(progress, rank, len(done))
    clock: dict[str, float] = {}  # seconds per kind of engine call, and the searches' own
    try:
        while True:
            batch = []
            for sid, text in mine:
                if sid in seen:
                    duplicates += sid not in done
                    continue
                seen.add(sid)
                batch.append((sid, text))
                if len(batch) >= cfg.batch_snippets:
                    break
            if not batch:
                break
            results = run_searches(batch, sampler=sampler, scorer=scorer, cfg=cfg, phase="infuse",
                                   keep_groups=False, codec=codec, clock=clock)
            for r in results:
                writer.write(r.infused.to_record(), r.stats)
            new += len(batch)
            if bar is not None:
                bar.update(len(batch))
                s = merged_stats(writer.done_stats, writer.open_stats).summary()
                bar.set_postfix(think=f"{s['think_rate']:.3f}", rollout=f"{s['rollout_share']:.2f}")
        writer.close()
    finally:
        if bar is not None:
            bar.close()
    return {"stats": writer.done_stats, "shards": list(writer.shards), "new": new, "duplicates": duplicates,
            "seconds": {k: round(v, 3) for k, v in sorted(clock.items())}}


def _progress(enabled: bool, rank: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=f"infuse r{rank}", unit="snippet", initial=initial, mininterval=2.0)


def merged_stats(*stats: SearchStats) -> SearchStats:
    out = SearchStats()
    for s in stats:
        out.merge(s)
    return out
