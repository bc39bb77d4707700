"""Samples in (validation with file:line errors), pass@k and result files out, and `ra3 eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ra3_megatron.cli.main import main
from ra3_megatron.core.passk import estimate_pass_at_k
from ra3_megatron.errors import InputError
from ra3_megatron.eval.benchmarks import load_mbpp, load_problem_file
from ra3_megatron.eval.checker import Outcome
from ra3_megatron.eval.samples import details_path, read_samples, summarize, write_results

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVALPLUS_TINY = FIXTURES / "evalplus_tiny.jsonl"


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_completion_and_solution_samples(tmp_path):
    ds = load_problem_file(EVALPLUS_TINY)
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            {"task_id": "HumanEval/0", "completion": "    return a + b\n"},
            "",
            {"task_id": "Mbpp/7", "solution": "def hyp(a, b):\n    return 5.0\n"},
        ],
    )
    samples = read_samples(path, ds)
    assert [s.line for s in samples] == [1, 3]
    assert samples[0].program == ds.problems["HumanEval/0"].prompt + "    return a + b\n"
    assert samples[1].program == "def hyp(a, b):\n    return 5.0\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"task_id": "HumanEval/0", "completion": "    ret', "s.jsonl:2: not valid JSON"),
        ({"task_id": "HumanEval/99", "completion": "x"}, "s.jsonl:2: unknown task_id 'HumanEval/99'"),
        ({"completion": "x"}, "s.jsonl:2: missing task_id"),
        ({"task_id": "HumanEval/0"}, "s.jsonl:2: task HumanEval/0: missing completion"),
        (
            {"task_id": "HumanEval/0", "completion": 3},
            "s.jsonl:2: task HumanEval/0: completion must be a string",
        ),
        ("[1, 2]", "s.jsonl:2: each line must be a JSON object"),
    ],
)
def test_bad_sample_lines_name_file_and_line(tmp_path, line, message):
    ds = load_problem_file(EVALPLUS_TINY)
    path = write_lines(
        tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "    return 0\n"}, line]
    )
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_samples(path, ds)


def test_mbpp_samples_accept_plain_integer_ids(tmp_path):
    ds = load_mbpp(FIXTURES / "mbpp_tiny")
    path = write_lines(
        tmp_path / "s.jsonl", [{"task_id": 11, "completion": "x"}, {"task_id": "Mbpp/13", "completion": "y"}]
    )
    assert [s.task_id for s in read_samples(path, ds)] == ["Mbpp/11", "Mbpp/13"]


def test_pass_at_k_uses_the_unbiased_estimator_and_skips_impossible_k(tmp_path):
    ds = load_problem_file(EVALPLUS_TINY)
    path = write_lines(
        tmp_path / "s.jsonl", [{"task_id": t, "completion": ""} for t in ["HumanEval/0"] * 5 + ["Mbpp/7"] * 6]
    )
    samples = read_samples(path, ds)
    passed = [True, False, True, False, False] + [False] * 5 + [True]
    outcomes = [Outcome("passed" if p else "failed") for p in passed]
    results = summarize(ds, samples, outcomes, [1, 5, 10])
    expected = {k: float(estimate_pass_at_k(np.array([5, 6]), np.array([2, 1]), k).mean()) for k in (1, 5)}
    assert results["pass_at_k"] == {
        "pass@1": pytest.approx(expected[1]),
        "pass@5": pytest.approx(expected[5]),
    }
    assert results["pass_at_k"]["pass@1"] == pytest.approx((2 / 5 + 1 / 6) / 2)
    assert (
        results["pass_at_k_skipped"] == [10]
        and results["tasks_checked"] == 2
        and results["tasks_in_dataset"] == 3
    )
    assert results["per_task"]["Mbpp/7"] == {
        "n": 6,
        "correct": 1,
        "pass@1": pytest.approx(1 / 6),
        "pass@5": pytest.approx(5 / 6),
    }
    details = write_results(tmp_path / "r.json", results, samples, outcomes)
    assert details == details_path(tmp_path / "r.json") == tmp_path / "r.details.jsonl"
    rows = [json.loads(x) for x in details.read_text().splitlines()]
    assert len(rows) == 11 and rows[1] == {
        "task_id": "HumanEval/0",
        "sample": 1,
        "line": 2,
        "passed": False,
        "status": "failed",
        "reason": "",
        "seconds": 0.0,
    }
    assert json.loads((tmp_path / "r.json").read_text())["outcomes"] == {
        "passed": 3,
        "failed": 8,
        "timed_out": 0,
        "error": 0,
    }


def test_ra3_eval_cli_checks_samples_and_writes_results(tmp_path, capsys):
    samples = write_lines(
        tmp_path / "samples.jsonl",
        [
            {"task_id": "HumanEval/0", "completion": "    return a + b\n"},
            {"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"},
            {"task_id": "HumanEval/1", "completion": "    return [x * x for x in xs]\n"},
            {"task_id": "HumanEval/1", "completion": "    return xs\n"},
            {"task_id": "Mbpp/7", "solution": "import math\ndef hyp(a, b):\n    return math.hypot(a, b)\n"},
            {"task_id": "Mbpp/7", "solution": "import os\nos._exit(0)\n"},
        ],
    )
    out = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "--dataset",
            str(EVALPLUS_TINY),
            "--samples",
            str(samples),
            "--out",
            str(out),
            "--k",
            "1,2,5",
            "--timeout",
            "1.5",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["pass_at_k"] == {"pass@1": pytest.approx(0.5), "pass@2": pytest.approx(1.0)}
    assert results["outcomes"] == {"passed": 3, "failed": 2, "timed_out": 1, "error": 0}
    statuses = [
        json.loads(x)["status"] for x in (tmp_path / "results.details.jsonl").read_text().splitlines()
    ]
    assert statuses == ["passed", "timed_out", "passed", "failed", "passed", "failed"]
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "50.00%" in printed and "pass@k skipped for k=[5]" in printed


def test_ra3_eval_cli_reports_a_bad_line_and_exits_2(tmp_path, capsys):
    samples = write_lines(
        tmp_path / "samples.jsonl", [{"task_id": "HumanEval/0", "completion": "x"}, '{"task_id": "Human']
    )
    code = main(
        [
            "eval",
            "--dataset",
            str(EVALPLUS_TINY),
            "--samples",
            str(samples),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert f"{samples}:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_ra3_eval_cli_names_a_line_that_is_not_utf8(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(b'{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/0", "completion": "\xff"}\n')
    code = main(["eval", "--dataset", str(EVALPLUS_TINY), "--samples", str(samples), "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert f"{samples}:2: not UTF-8 (byte 0xff at column 43)" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_problem_file_that_is_not_utf8_names_the_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(EVALPLUS_TINY.read_bytes() + b'{"task_id": "\xc3\x28"}\n')
    lines = EVALPLUS_TINY.read_bytes().count(b"\n")
    with pytest.raises(InputError, match=rf"p.jsonl:{lines + 1}: not UTF-8 \(byte 0xc3 at column 14\)"):
        load_problem_file(bad)
