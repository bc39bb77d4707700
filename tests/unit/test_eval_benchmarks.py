"""Benchmark loaders, prompts and stops, on small hand-written fixtures (and the real HumanEval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ra3_megatron.errors import ConfigError, InputError
from ra3_megatron.eval import prompts
from ra3_megatron.eval.benchmarks import (
    bundled_mbpp_dir,
    load_dataset,
    load_humaneval,
    load_mbpp,
    load_problem_file,
    resolve_mbpp_dir,
)
from ra3_megatron.eval.checker import check_many
from ra3_megatron.eval.sandbox import SandboxConfig

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MBPP_TINY = FIXTURES / "mbpp_tiny"
EVALPLUS_TINY = FIXTURES / "evalplus_tiny.jsonl"


def check(jobs):
    return check_many(jobs, SandboxConfig(timeout_s=5), workers=2, progress=False)


def test_mbpp_full_keeps_the_test_split_and_builds_the_3shot_prompt():
    ds = load_mbpp(MBPP_TINY)
    assert list(ds.problems) == ["Mbpp/11", "Mbpp/12", "Mbpp/13", "Mbpp/14"]  # 2-4 are shots, 600 is train
    assert (
        ds.resolve(12) == ds.resolve("12") == ds.resolve("Mbpp/12") == "Mbpp/12" and ds.resolve(600) is None
    )
    p = ds.problems["Mbpp/11"]
    assert p.prompt.count("[BEGIN]") == 4 and p.prompt.count("[DONE]") == 3 and p.prompt.endswith("[BEGIN]\n")
    assert (
        "Write a function to double a number." in p.prompt
        and "assert count_vowels('banana') == 3" in p.prompt
    )
    assert p.entry_point == "count_vowels" and p.code_prompt == "" and ds.stops == ("[DONE]",)
    assert "\r" not in p.canonical_solution


def test_mbpp_evalplus_style_prompt():
    ds = load_mbpp(MBPP_TINY, prompt="evalplus")
    p = ds.problems["Mbpp/11"]
    assert (
        p.prompt
        == '"""\nWrite a function to count the vowels in a string.\nassert count_vowels(\'banana\') == 3\n"""\n'
    )
    assert p.code_prompt == p.prompt and "\nassert " in ds.stops


def test_canonical_solutions_pass_and_wrong_ones_fail_on_the_fixtures():
    jobs = []
    for ds in (load_mbpp(MBPP_TINY), load_mbpp(MBPP_TINY, sanitized=True), load_problem_file(EVALPLUS_TINY)):
        for p in ds.problems.values():
            jobs += [
                (p, p.canonical_solution),
                (p, p.program(completion="")),
                (p, p.program(completion="    return 1\n")),
            ]
    outcomes = check(jobs)
    for (p, program), o in zip(jobs, outcomes):
        expected = program == p.canonical_solution
        assert o.passed == expected, (p.task_id, program, o)


def test_setup_code_objects_of_the_programs_own_class_reach_it_by_reference():
    p = load_mbpp(MBPP_TINY).problems["Mbpp/12"]  # setup builds Link objects from the solution's class
    wrong = p.canonical_solution.replace("1 + depth", "2 + depth")
    assert [o.passed for o in check([(p, p.canonical_solution), (p, wrong)])] == [True, False]


def test_sanitized_uses_test_imports():
    ds = load_mbpp(MBPP_TINY, sanitized=True)
    assert list(ds.problems) == ["Mbpp/11", "Mbpp/13"] and ds.problems["Mbpp/13"].setup == "import math"


def test_mbpp_is_shipped_inside_the_package(monkeypatch):
    import ra3_megatron

    monkeypatch.delenv("RA3_MBPP_DIR", raising=False)
    packaged = resolve_mbpp_dir()
    assert packaged == bundled_mbpp_dir()
    assert Path(ra3_megatron.__file__).parent in packaged.parents  # nothing outside the package
    assert "CC BY 4.0" in (packaged / "SOURCE.md").read_text()
    assert len(load_dataset("mbpp").problems) == 500


def test_mbpp_directory_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("RA3_MBPP_DIR", str(MBPP_TINY))
    assert resolve_mbpp_dir() == MBPP_TINY
    assert load_dataset("mbpp").name == "mbpp"
    assert resolve_mbpp_dir(tmp_path) == tmp_path  # an explicit dir wins over the env var
    monkeypatch.setenv("RA3_MBPP_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="--mbpp-dir"):
        resolve_mbpp_dir()


def test_evalplus_problem_file():
    ds = load_problem_file(EVALPLUS_TINY)
    he, mbpp = ds.problems["HumanEval/0"], ds.problems["Mbpp/7"]
    assert he.check_call and he.entry_point == "add" and he.code_prompt == he.prompt
    assert not mbpp.check_call and mbpp.entry_point == "hyp" and mbpp.test.startswith("import math")
    assert ds.stops == prompts.HUMANEVAL_STOPS


def test_bad_problem_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"task_id": "a", "prompt": "x", "assertion": "assert f() == 1"}) + "\n{broken\n"
    )
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        load_problem_file(bad)
    bad.write_text(json.dumps({"task_id": "a", "prompt": "x"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: problem a: needs"):
        load_problem_file(bad)
    bad.write_text(json.dumps({"task_id": "b", "prompt": "", "assertion": "assert f(1 == 2"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: problem b: its test code does not compile"):
        load_problem_file(bad)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset(str(tmp_path / "nope.jsonl"))


def test_humaneval_loads_from_the_package_data():
    ds = load_humaneval()
    assert len(ds.problems) == 164 and all(p.check_call and p.entry_point for p in ds.problems.values())
    assert ds.problems["HumanEval/0"].entry_point == "has_close_elements"
    assert "\n#" not in ds.stops and "\ndef " in ds.stops  # thoughts are "# ..." lines: never a stop


def test_truncate_at_stops():
    text = "    x = 1\n    # think: add one\n    return x + 1\ndef other():\n    pass\nprint(3)"
    assert (
        prompts.truncate_at_stops(text, prompts.HUMANEVAL_STOPS)
        == "    x = 1\n    # think: add one\n    return x + 1"
    )
    assert prompts.truncate_at_stops("code\n[DONE]\nmore", prompts.MBPP_3SHOT_STOPS) == "code\n"
    assert prompts.truncate_at_stops("no stop here", ("[DONE]",)) == "no stop here"
