"""`ra3 compare`'s parts: the control arms' records, the paired bootstrap, the verdict, the config."""

from __future__ import annotations

import numpy as np
import pytest

from ra3_megatron.compare.arms import ntp_records, null_records, shuffled_records
from ra3_megatron.compare.config import CompareConfig
from ra3_megatron.compare.report import verdict
from ra3_megatron.compare.stats import paired_ce_diff, paired_rate_diff, pooled_ce_interval
from ra3_megatron.core.latent import InfusedSnippet, Thought
from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.thinking import candidate_lines

pytestmark = pytest.mark.unit

TEXT = "".join(f"def f{i}(x):\n    y = x + {i}\n    z = y * 2\n    return z\n\n" for i in range(6))


def _ra3(n: int = 20) -> list[InfusedSnippet]:
    lines = candidate_lines(TEXT, EStepConfig())
    return [InfusedSnippet(id=f"s{k}", text=TEXT, thoughts=(Thought(line=lines[k % len(lines)], text=f"idea {k}"),
                                                             Thought(line=lines[-1], text="last")))
            for k in range(n)]


def test_controls_keep_the_code_and_move_or_blank_the_thoughts():
    cfg, ra3 = EStepConfig(), _ra3()
    ntp = list(ntp_records(ra3))
    null = list(null_records(ra3, "Handle the remaining cases."))
    shuffled = list(shuffled_records(ra3, cfg, seed=1))
    assert [s.text for s in ntp] == [s.text for s in null] == [s.text for s in shuffled] == [s.text for s in ra3]
    assert all(not s.thoughts for s in ntp)
    for a, b in zip(ra3, null):
        assert [t.line for t in a.thoughts] == [t.line for t in b.thoughts]
        assert {t.text for t in b.thoughts} == {"Handle the remaining cases."}
    safe = set(candidate_lines(TEXT, cfg))
    moved = 0
    for a, b in zip(ra3, shuffled):
        assert sorted(t.text for t in a.thoughts) == sorted(t.text for t in b.thoughts)
        assert {t.line for t in b.thoughts} <= safe
        moved += [t.line for t in a.thoughts] != [t.line for t in b.thoughts]
    assert moved >= len(ra3) // 2  # positions really move
    again = list(shuffled_records(ra3, cfg, seed=1))
    other = list(shuffled_records(ra3, cfg, seed=2))
    assert again == shuffled and other != shuffled


def test_paired_difference_and_its_interval():
    rng = np.random.default_rng(0)
    tokens = rng.integers(50, 200, size=200)
    b = tokens * 2.0 + rng.normal(0, 5, size=200)
    same = paired_ce_diff(b, b, tokens, resamples=500, seed=0)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
    better = paired_ce_diff(b - 0.1 * tokens, b, tokens, resamples=500, seed=0)
    assert better["mean"] == pytest.approx(-0.1) and better["ci95"][1] < 0 and better["share_a_better"] == 1.0
    noise = paired_ce_diff(b + rng.normal(0, 20, size=200), b, tokens, resamples=500, seed=0)
    assert noise["ci95"][0] < 0 < noise["ci95"][1]
    level = pooled_ce_interval(b, tokens, resamples=500, seed=0)
    assert level["ci95"][0] < level["mean"] < level["ci95"][1]
    rate = paired_rate_diff([1, 1, 0, 1] * 10, [0, 1, 0, 0] * 10, resamples=500, seed=0)
    assert rate["mean"] == pytest.approx(0.5) and rate["ci95"][0] > 0
    with pytest.raises(ValueError, match="same snippets"):
        paired_ce_diff([1.0], [1.0, 2.0], [1], resamples=100, seed=0)


def test_intervals_resample_files_not_snippets():
    """Snippets of one file move together: with two files whose snippets all favour a by the same
    margin but with opposite signs across files, the file-level interval holds zero while a
    snippet-level one would not."""
    tokens = [100] * 40
    b = [200.0] * 40
    a = [190.0] * 20 + [209.0] * 20  # file f0 better by 0.1, file f1 worse by 0.09
    ids = [f"f0.py#{k}" for k in range(20)] + [f"f1.py#{k}" for k in range(20)]
    from ra3_megatron.compare.stats import file_of

    files = [file_of(x) for x in ids]
    by_file = paired_ce_diff(a, b, tokens, resamples=1000, seed=0, units=files)
    by_snippet = paired_ce_diff(a, b, tokens, resamples=1000, seed=0)
    assert by_file["n"] == 2 and by_snippet["n"] == 40
    assert by_file["mean"] == pytest.approx(by_snippet["mean"])
    width = lambda d: d["ci95"][1] - d["ci95"][0]  # noqa: E731
    assert width(by_file) > 3 * width(by_snippet)
    assert pooled_ce_interval(b, tokens, resamples=200, seed=0, units=files)["n"] == 2


def test_code_tokens_trained_are_read_from_the_mstep_metrics(tmp_path):
    import json

    from ra3_megatron.compare.run import mstep_code_tokens

    rows = [{"step": 1, "code_tokens": 100}, {"step": 2, "code_tokens": 90}, {"step": 2, "code_tokens": 90},
            {"step": 3, "code_tokens": 80}, {"step": 3, "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert mstep_code_tokens(tmp_path) == (3, 270.0)  # a step logged twice (a resume) counts once
    assert mstep_code_tokens(tmp_path / "missing") is None


def _d(lo: float, hi: float) -> dict:
    return {"as_used": {"mean": (lo + hi) / 2, "ci95": [lo, hi]}}


def test_verdict_says_yes_only_when_every_interval_is_below_zero():
    yes = verdict({"ra3-ntp": _d(-0.2, -0.1), "ra3-shuffled": _d(-0.1, -0.01), "ra3-null": _d(-0.3, -0.2)})
    assert yes.startswith("Yes")
    no = verdict({"ra3-ntp": _d(-0.2, -0.1), "ra3-shuffled": _d(-0.1, 0.01), "ra3-null": _d(0.1, 0.2)})
    assert no.startswith("No") and "beat ntp" in no and "worse than null" in no and "shuffled is within noise" in no
    partial = verdict({"ra3-ntp": _d(-0.2, -0.1)})
    assert partial.startswith("Yes") and "not compared: shuffled, null" in partial
    nan = float("nan")
    assert verdict({"ra3-ntp": _d(nan, nan), "ra3-shuffled": _d(-1, -0.5), "ra3-null": _d(-1, -0.5)}).startswith(
        "No verdict")


def test_config_refuses_what_cannot_be_compared():
    base = dict(model="m", input="i", heldout="h", out="o")
    with pytest.raises(ConfigError, match="add ra3"):
        CompareConfig(**base, arms=("ntp",))
    with pytest.raises(ConfigError, match="unknown arm"):
        CompareConfig(**base, arms=("ra3", "gpt"))
    with pytest.raises(ConfigError, match="pass@1"):
        CompareConfig(**base, pass1=("apps",))
    with pytest.raises(ConfigError, match="init"):
        CompareConfig(**base, init="latest")
    cfg = CompareConfig(**base, penalties=(0.2, 0.01))
    assert cfg.all_arms() == ["ra3", "ntp", "shuffled", "null", "ra3_c0.2", "ra3_c0.01"]
