"""The infusion pass: sharding over workers, crash + resume, streaming, the manifest `ra3 prepare` reads."""

from __future__ import annotations

import json

import pytest

from ra3_megatron.core.latent import InfusedSnippet
from ra3_megatron.estep import shards as shards_mod
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.infuse import infuse
from ra3_megatron.estep.shards import completed_shards, try_write_manifest, write_rank_done
from ra3_megatron.rollout.fake import FakeEngine

pytestmark = pytest.mark.unit

CFG = dict(
    samples=2, horizon=2, decision="force", max_latent_tokens=8, penalty=0.0, shard_size=5, batch_snippets=3
)


def corpus(n: int):
    for i in range(n):
        yield (
            f"m{i}.py#0",
            f"def f{i}(x):\n    y = x + {i}\n    if y > {i % 7}:\n        return y\n    return -y\n",
        )


def _engine():
    return FakeEngine(corpus=[text for _, text in corpus(20)], alpha=0.01)


def _records(out):
    recs = []
    for shard in completed_shards(out):
        recs += [json.loads(line) for line in shard.read_text().splitlines()]
    return recs


def test_workers_split_the_corpus_exactly_once(tmp_path):
    cfg = EStepConfig(**CFG)
    engine = _engine()
    for rank in range(3):
        res = infuse(
            corpus(40), tmp_path, sampler=engine, scorer=engine, cfg=cfg, rank=rank, world=3, progress=False
        )
        write_rank_done(tmp_path, rank, res["shards"], res["stats"], {})
        if rank < 2:
            assert try_write_manifest(tmp_path, 3, {}) is None
    manifest = try_write_manifest(tmp_path, 3, {})
    ids = [r["id"] for r in _records(tmp_path)]
    assert sorted(ids) == sorted(sid for sid, _ in corpus(40)) and len(set(ids)) == 40
    assert manifest["records"] == 40 and manifest["stats"]["snippets"] == 40

    from ra3_megatron.data.readers import iter_documents

    docs = list(iter_documents(tmp_path))
    assert len(docs) == 40 and all(d.thoughts is not None for d in docs)
    texts = dict(corpus(40))
    for d in docs:
        assert d.text == texts[d.id]


def test_crash_then_resume_gives_each_snippet_once_and_the_same_bytes(tmp_path):
    cfg = EStepConfig(**CFG)
    engine = _engine()
    clean = tmp_path / "clean"
    infuse(corpus(30), clean, sampler=engine, scorer=engine, cfg=cfg, progress=False)

    def crashing():
        for k, item in enumerate(corpus(30)):
            if k == 19:  # 18 searched: 3 committed shards of 5, 3 records in the open one
                raise RuntimeError("simulated crash")
            yield item

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError):
        infuse(crashing(), out, sampler=engine, scorer=engine, cfg=cfg, progress=False)
    assert list(out.glob("*.jsonl.tmp")), "the open shard is left behind as .tmp"
    assert len(_records(out)) == 15  # three committed shards of 5
    res = infuse(corpus(30), out, sampler=engine, scorer=engine, cfg=cfg, progress=False)
    assert res["new"] == 15 and not list(out.glob("*.tmp"))
    assert _records(out) == _records(clean)
    for a, b in zip(completed_shards(out), completed_shards(clean)):
        assert a.read_bytes() == b.read_bytes()
    assert (
        res["stats"].to_dict()
        == infuse(corpus(30), clean, sampler=engine, scorer=engine, cfg=cfg, progress=False)[
            "stats"
        ].to_dict()
    )


def test_a_shard_without_its_stats_file_is_redone(tmp_path):
    cfg = EStepConfig(**CFG)
    engine = _engine()
    infuse(corpus(10), tmp_path, sampler=engine, scorer=engine, cfg=cfg, progress=False)
    before = _records(tmp_path)
    (tmp_path / "part-r000-00001.stats.json").unlink()  # as if killed between stats file and rename
    res = infuse(corpus(10), tmp_path, sampler=engine, scorer=engine, cfg=cfg, progress=False)
    assert res["new"] == 5 and _records(tmp_path) == before


def test_streams_with_bounded_lag_and_skips_duplicate_ids(tmp_path, monkeypatch):
    cfg = EStepConfig(**CFG)
    engine = _engine()
    written = [0]
    real_write = shards_mod.ShardWriter.write

    def counting_write(self, record, stats):
        written[0] += 1
        return real_write(self, record, stats)

    monkeypatch.setattr(shards_mod.ShardWriter, "write", counting_write)
    max_lag = [0]

    def watched():
        for k, item in enumerate(corpus(60)):
            max_lag[0] = max(max_lag[0], k - written[0])
            yield item
            if k == 10:
                yield item  # a duplicate id: skipped and counted

    res = infuse(watched(), tmp_path, sampler=engine, scorer=engine, cfg=cfg, progress=False)
    assert max_lag[0] <= cfg.batch_snippets
    assert res["duplicates"] == 1 and len(_records(tmp_path)) == 60


def test_records_round_trip_and_thoughts_sit_on_safe_lines(tmp_path):
    cfg = EStepConfig(**CFG)
    engine = _engine()
    infuse(corpus(12), tmp_path, sampler=engine, scorer=engine, cfg=cfg, progress=False)
    import ast

    n_thoughts = 0
    for rec in _records(tmp_path):
        snip = InfusedSnippet.from_record(rec)
        n_thoughts += len(snip.thoughts)
        assert ast.dump(ast.parse(snip.render())) == ast.dump(ast.parse(snip.text))
        assert all(t.gain is not None and t.gain > 0 for t in snip.thoughts)
    assert n_thoughts > 0  # c = 0: any thought with a positive gain is kept
