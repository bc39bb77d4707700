"""`ra3 compare` end to end on the tiny model (small sizes): four arms trained by the real
in-process M-step on equal code tokens, read on held-out files, the report written; a crash
mid-run resumes at the phase where it stopped; held-out code that is also training code is refused."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from ra3_megatron.cli.main import main

pytestmark = pytest.mark.integration

FAIL_ONCE = "RA3_TEST_COMPARE_FAIL_ONCE"


def flaky_mstep(cfg, **kwargs):
    """The in-process M-step, failing once for the null arm when asked to."""
    from ra3_megatron.em.phases import mstep_inprocess

    marker = os.environ.get(FAIL_ONCE)
    if marker and "null" in cfg.out and not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError("simulated crash in the null arm's M-step")
    return mstep_inprocess(cfg, **kwargs)


def _corpus(root: Path, start: int) -> Path:
    root.mkdir(parents=True)
    for i in range(start, start + 4):
        (root / f"m{i}.py").write_text(textwrap.dedent(f"""
            def f{i}(xs):
                total = 0
                for x in xs:
                    if x > {i}:
                        total += x * {i}
                    else:
                        total -= 1
                return total


            def g{i}(a, b):
                c = a + b
                return c * {i} - a
            """).lstrip())
    return root


def _argv(model, train, heldout, out):
    return ["compare", "--model", str(model), "--input", str(train), "--heldout", str(heldout), "--out", str(out),
            "--backend", "hf", "--rl-steps", "1", "--rl-snippets", "2", "--samples", "2", "--horizon", "2",
            "--penalty", "0.0", "--think-floor", "0.5", "--mstep-runner", "test_compare_cli:flaky_mstep",
            "--mstep.steps", "2", "--mstep.global-batch-size", "2", "--mstep.seq-length", "64",
            "--pass1", "humaneval,mbpp", "--pass1-limit", "2",
            "--pass1-max-tokens", "24", "--think-samples", "2", "--bootstrap", "200", "--no-progress"]


def test_compare_runs_four_arms_resumes_and_reports(tiny_model_dir, tmp_path, monkeypatch, capsys):
    train, heldout, out = _corpus(tmp_path / "train", 0), _corpus(tmp_path / "heldout", 10), tmp_path / "out"
    monkeypatch.setenv(FAIL_ONCE, str(tmp_path / "failed"))
    with pytest.raises(RuntimeError, match="null arm"):
        main(_argv(tiny_model_dir, train, heldout, out))
    done = json.loads((out / "state.json").read_text())["completed"]
    assert "train/ra3" in done and "train/ntp" in done and "train/null" not in done
    assert main(_argv(tiny_model_dir, train, heldout, out)) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["completed"][: len(done)] == done  # nothing finished was redone
    results = json.loads((out / "results.json").read_text())
    arms = results["arms"]
    assert set(arms) == {"base", "ntp", "ra3", "shuffled", "null"}
    for arm in ("ntp", "ra3", "shuffled", "null"):
        r = arms[arm]
        assert r["code_tokens"] > 0 and r["heldout_ce"]["ci95"][0] <= r["heldout_ce"]["mean"] <= r["heldout_ce"]["ci95"][1]
        assert set(r["pass1"]) == {"humaneval", "mbpp"}
        assert ("heldout_ce_thinking" in r) == (arm != "ntp")
    # one engine reads every arm, each with its own weights (trained arms differ from the base)
    ces = {a: arms[a]["heldout_ce"]["mean"] for a in arms}
    assert len(set(ces.values())) == len(ces), ces
    # equal code tokens, up to one step's worth (2 x 64 tokens)
    codes = [arms[a]["code_tokens"] for a in ("ntp", "ra3", "shuffled", "null")]
    assert max(codes) - min(codes) <= 2 * 64
    ra3 = arms["ra3"]
    assert ra3["token_count_mismatches"] == 0 and ra3["think_rate"] >= 0 and ra3["infused_think_rate"] > 0
    d = results["diffs"]["ra3-ntp"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1] and d["n"] == results["heldout_snippets"] > 0
    assert set(results["diffs"]) >= {"ra3-ntp", "shuffled-ntp", "null-ntp", "ra3-shuffled", "ra3-null"}
    assert results["verdict"].startswith(("Yes", "No"))
    report = (out / "report.md").read_text()
    assert results["verdict"] in report and "heldout_ce.png" in report
    assert (out / "heldout_ce.png").stat().st_size > 1000 and (out / "diffs.png").stat().st_size > 1000
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # a finished run reruns nothing and gives the same figures
    capsys.readouterr()
    assert main(_argv(tiny_model_dir, train, heldout, out)) == 0
    assert " ..." not in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["diffs"] == results["diffs"]
    # held-out code must be other files than the training input; refused before any training
    assert main(_argv(tiny_model_dir, train, train, tmp_path / "overlap")) != 0
    assert "also in the training input" in capsys.readouterr().err
    assert not (tmp_path / "overlap" / "arms").exists()
