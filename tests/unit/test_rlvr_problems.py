"""RLVR problem sets: the user jsonl format and its errors, MBPP splits, the planted task."""

from __future__ import annotations

import json

import pytest

from ra3_megatron.errors import ConfigError, InputError
from ra3_megatron.rlvr.problems import MBPP_SPLITS, load_jsonl, load_mbpp, load_tasks, planted_tasks

pytestmark = pytest.mark.unit


def _write(tmp_path, *lines):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_jsonl_problem_and_defaults(tmp_path):
    path = _write(
        tmp_path,
        {"prompt": "def add(a, b):\n", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
        "",
        {
            "task_id": "whole",
            "prompt": "Write add.",
            "tests": "assert add(2, 2) == 4",
            "code_prompt": "",
            "stop": ["[DONE]"],
            "entry_point": "add",
            "setup": "import math",
        },
    )
    first, second = load_jsonl(path)
    assert first.task_id == "line-1" and first.problem.test == "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    # completion mode by default: the program continues the prompt
    assert first.problem.program(completion="    return a + b\n") == "def add(a, b):\n    return a + b\n"
    assert "\ndef " in first.stop
    assert second.task_id == "whole" and second.stop == ("[DONE]",)
    assert second.problem.program(completion="x = 1") == "x = 1"
    assert second.problem.setup == "import math" and second.problem.entry_point == "add"


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"tests": ["assert True"]}), 'missing field "prompt"'),
        (json.dumps({"prompt": "  ", "tests": ["assert True"]}), 'field "prompt" is empty'),
        (json.dumps({"prompt": 3, "tests": ["assert True"]}), 'field "prompt" must be a string'),
        (json.dumps({"prompt": "x", "tests": [1]}), 'field "tests" must be a list of strings'),
        (json.dumps({"prompt": "x", "tests": []}), 'field "tests" is empty'),
        (json.dumps({"prompt": "x", "tests": ["assert ("]}), 'field "tests" is not valid Python'),
        (json.dumps({"prompt": "x", "tests": ["assert 1"], "stop": "\n"}), 'field "stop" must be a list'),
        (
            json.dumps({"prompt": "x", "tests": ["assert 1"], "code_prompt": None, "setup": 5}),
            'field "setup" must be a string',
        ),
    ],
)
def test_jsonl_bad_line_names_file_line_and_problem(tmp_path, line, problem):
    good = json.dumps({"prompt": "def f():\n", "tests": ["assert f() is None"]})
    path = _write(tmp_path, good, line)
    with pytest.raises(InputError) as err:
        load_jsonl(path)
    assert err.value.line == 2 and problem in err.value.problem
    assert str(err.value).startswith(f"{path}:2: ")


def test_jsonl_duplicate_ids_empty_and_missing_file(tmp_path):
    row = {"task_id": "a", "prompt": "x", "tests": ["assert 1"]}
    with pytest.raises(InputError, match="duplicate task_id 'a' \\(first on line 1\\)"):
        load_jsonl(_write(tmp_path, row, row))
    with pytest.raises(InputError, match="no problems"):
        load_jsonl(_write(tmp_path, "", "  "))
    with pytest.raises(InputError, match="not found"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_jsonl_accepts_evaluation_formats(tmp_path):
    humaneval = {
        "task_id": "H/0",
        "prompt": 'def f(x):\n    """Return x."""\n',
        "entry_point": "f",
        "test": "def check(candidate):\n    assert candidate(1) == 1\n",
    }
    mbpp = {
        "task_id": 7,
        "text": "Return x.",
        "test_list": ["assert g(1) == 1"],
        "code": "def g(x):\n    return x",
    }
    h, m = load_jsonl(_write(tmp_path, humaneval, mbpp))
    assert h.problem.check_call and "\ndef " in h.stop
    assert m.problem.entry_point == "g" and m.problem.test == "assert g(1) == 1"


def test_mbpp_splits():
    train = load_mbpp("train")
    ids = sorted(int(t.task_id.split("/")[1]) for t in train)
    assert (ids[0], ids[-1], len(ids)) == (*MBPP_SPLITS["train"], 374)
    first = train[0]
    assert (
        first.stop == ("[DONE]",) and first.prompt.endswith("[BEGIN]\n") and first.problem.code_prompt == ""
    )
    assert first.problem.canonical_solution and first.problem.entry_point
    assert len(load_tasks("mbpp-validation")) == 90
    evalplus = load_mbpp("validation", prompt="evalplus")
    assert evalplus[0].prompt.startswith('"""') and evalplus[0].problem.code_prompt == evalplus[0].prompt
    with pytest.raises(ConfigError, match="unknown MBPP split"):
        load_mbpp("dev")
    with pytest.raises(ConfigError):
        load_mbpp("train", mbpp_dir="no/such/dir")


def test_planted_tasks_are_distinct_and_heldout_disjoint():
    train, held = planted_tasks(8), planted_tasks(4, offset=100)
    names = {t.problem.entry_point for t in train}
    assert len(names) == 8 and not names & {t.problem.entry_point for t in held}
    t = train[0]
    assert t.stop == ("\n",) and t.problem.program(completion=" 0").endswith("return 0")
