"""`ra3 estep` end to end on the tiny model with the fake engine: deterministic under a seed, and
a SIGKILL during the infusion pass followed by a rerun gives every snippet exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ra3_megatron.cli.main import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _write_corpus(root: Path, n_files: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        body = "\n".join(
            f"def f{i}_{k}(x):\n    # scale x by {k + 1}\n    y = x * {k + 1}\n    if y > {i}:\n"
            f"        # shift y down by {k}\n        y = y - {k}\n    return y\n"
            for k in range(3)
        )
        (root / f"mod{i}.py").write_text(f'"""Module {i}."""\nimport math\n\n{body}')
    return root


def _argv(model, corpus, out, *extra):
    return [
        "estep",
        "--model",
        str(model),
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--backend",
        "fake",
        "--samples",
        "2",
        "--horizon",
        "2",
        "--max-latent-tokens",
        "12",
        "--decision",
        "force",
        "--penalty",
        "0.0",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def _estep(model, corpus, out, *extra):
    assert main(_argv(model, corpus, out, *extra)) == 0


def _shard_bytes(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.glob("part-*.jsonl"))]


def test_deterministic_under_a_seed(tiny_model_dir, tmp_path, capsys):
    corpus = _write_corpus(tmp_path / "src")
    common = [
        "--rl-steps",
        "1",
        "--rl-snippets",
        "2",
        "--lr",
        "1e-3",
        "--shard-size",
        "3",
        "--max-snippet-tokens",
        "160",
    ]
    _estep(tiny_model_dir, corpus, tmp_path / "a", *common, "--seed", "1")
    printed = capsys.readouterr().out
    assert "  time: RL " in printed and "(chain " in printed  # where the run's time went, on the console
    _estep(tiny_model_dir, corpus, tmp_path / "b", *common, "--seed", "1")
    _estep(tiny_model_dir, corpus, tmp_path / "c", *common, "--seed", "2")
    a, b, c = (_shard_bytes(tmp_path / x) for x in "abc")
    assert a and a == b
    assert a != c
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert len(stats["rl"]) == 1 and stats["rl"][0]["examples"] > 0
    # RL's snippets: a seeded draw over the whole corpus (estep.rl.sample_snippets), the same again
    rl_ids = stats["rl"][0]["snippet_ids"]
    assert len(rl_ids) == 2 and rl_ids == json.loads((tmp_path / "b" / "stats.json").read_text())["rl"][0]["snippet_ids"]
    assert stats["infusion"]["records"] == sum(len(x.splitlines()) for x in a)
    for name in ("manifest.json", "report.md", "config.json"):
        assert (tmp_path / "a" / name).is_file()
    # where the infusion's time went: engine calls by kind, and the searches' own work
    parts = stats["seconds"]["infuse_parts"]
    assert {"probe", "chain", "score", "sample", "search"} <= set(parts) and min(parts.values()) >= 0
    assert 0 < sum(parts.values()) <= stats["seconds"]["infuse"]
    report = (tmp_path / "a" / "report.md").read_text()
    assert "Infusion time by engine call" in report
    # the corpus has a comment before every other code line: those positions are left out, and said so
    assert "scored from = content, comment lines = skip" in report
    assert stats["infusion"]["counts"]["comment_positions"] > 0 and "- comment_position_share: " in report
    assert list((tmp_path / "a" / "tb").iterdir()), "TensorBoard scalars"
    assert not (tmp_path / "a" / "rl" / "q").exists()  # q's weights are dropped unless --keep-q
    # a finished output is not redone; another configuration on it is refused
    _estep(tiny_model_dir, corpus, tmp_path / "a", *common, "--seed", "1")
    assert _shard_bytes(tmp_path / "a") == a
    assert (
        main(
            [
                "estep",
                "--model",
                str(tiny_model_dir),
                "--input",
                str(corpus),
                "--output",
                str(tmp_path / "b"),
                "--backend",
                "fake",
                "--penalty",
                "0.3",
                "--no-progress",
            ]
        )
        == 2
    )


def _snippet_jsonl(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            text = f"def g{i}(a):\n    # add {i}\n    b = a + {i}\n    return b * {i % 5}\n"
            f.write(json.dumps({"id": f"g{i}", "text": text}) + "\n")
    return path


def test_sigkill_during_infusion_then_resume(tiny_model_dir, tmp_path):
    src = _snippet_jsonl(tmp_path / "snippets.jsonl", 240)
    args = ["--rl-steps", "0", "--shard-size", "5", "--batch-snippets", "2"]
    clean = tmp_path / "clean"
    _estep(tiny_model_dir, src, clean, *args)

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "ra3_megatron.cli.main", *_argv(tiny_model_dir, src, out, *args)]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    deadline = time.monotonic() + 300
    while len(list(out.glob("part-*.jsonl"))) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists(), "killed before the end"
    n_done = sum(len(p.read_text().splitlines()) for p in out.glob("part-*.jsonl"))
    assert 20 <= n_done < 240

    _estep(tiny_model_dir, src, out, *args)
    ids = [
        json.loads(line)["id"]
        for p in sorted(out.glob("part-*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert len(ids) == 240 and set(ids) == {f"g{i}#0" for i in range(240)}  # DOC_ID#CHUNK
    assert _shard_bytes(out) == _shard_bytes(clean)  # the same records as a run that was never killed
    assert json.loads((out / "manifest.json").read_text())["records"] == 240
    assert json.loads((out / "stats.json").read_text())["infusion"]["counts"]["chosen"] > 0


def test_pi_and_q_on_one_engine_write_the_same_records(tiny_model_dir, tmp_path):
    """--share-pi-q: one transformers engine serves pi and q, each role's weights swapped in when
    its turn comes. RL moves q, so a swap that failed to happen would change the records; the
    serve loop's ordering keeps it to at most one swap per round (plus RL's and the start)."""
    corpus = _write_corpus(tmp_path / "src", n_files=2)
    common = ["--backend", "hf", "--trainer", "torch", "--rl-steps", "1", "--rl-snippets", "2", "--lr", "3e-2",
              "--max-snippet-tokens", "160", "--seed", "3"]
    _estep(tiny_model_dir, corpus, tmp_path / "two", *common)
    _estep(tiny_model_dir, corpus, tmp_path / "one", *common, "--share-pi-q")
    assert _shard_bytes(tmp_path / "two") and _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    two = json.loads((tmp_path / "two" / "stats.json").read_text())
    one = json.loads((tmp_path / "one" / "stats.json").read_text())
    assert "weight_swaps" not in two and one["rl"][0]["loss"] == pytest.approx(two["rl"][0]["loss"], abs=1e-6)
    assert one["weight_swaps"] > 2 and one["seconds"]["swap"] > 0
    rounds = one["infusion"]["counts"]["rollouts"] + one["infusion"]["counts"]["positions"]  # a loose bound
    assert one["weight_swaps"] <= rounds
