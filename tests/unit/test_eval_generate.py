"""Sample generation through the rollout-engine interface, with a tiny fake engine defined here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ra3_megatron.cli.main import main
from ra3_megatron.eval.benchmarks import load_problem_file
from ra3_megatron.eval.generate import existing_counts, generate_samples
from ra3_megatron.rollout.base import (
    Completion,
    RolloutEngine,
    RolloutEngineBase,
    SamplingConfig,
    register_engine,
)

pytestmark = pytest.mark.unit

EVALPLUS_TINY = Path(__file__).resolve().parents[1] / "fixtures" / "evalplus_tiny.jsonl"
ANSWERS = {  # prompt marker -> what the "model" writes (with text past a stop sequence)
    "def add(": "    return a + b\n\n\ndef unused():\n    pass\n",
    "def squares(": "    # think: square each item\n    return [x * x for x in xs]\nprint(squares([2]))\n",
    "hypotenuse": "import math\ndef hyp(a, b):\n    return 0.0\n\nassert hyp(3, 4) == 5\n",
}


class TinyEngine(RolloutEngineBase):
    """Deterministic stand-in for a model: a canned answer per prompt; records every call."""

    calls: list[tuple[list[str], SamplingConfig]] = []

    def __init__(self, model: str | None = None):
        self.model = model
        self.tokenizer = None

    def generate(self, prompts, config: SamplingConfig) -> list[list[Completion]]:
        TinyEngine.calls.append((list(prompts), config))
        out = []
        for prompt in prompts:
            text = next(answer for marker, answer in ANSWERS.items() if marker in prompt)
            out.append([Completion(text=text, token_ids=(1, 2, 3)) for _ in range(config.n)])
        return out

    def score_groups(self, groups):
        raise NotImplementedError

    def load_weights(self, hf_dir: str) -> None:
        pass

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


register_engine("eval-test-tiny", f"{__name__}:TinyEngine")


@pytest.fixture(autouse=True)
def _reset_calls():
    TinyEngine.calls.clear()


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_tiny_engine_follows_the_interface():
    assert isinstance(TinyEngine(), RolloutEngine)


def test_generates_n_samples_per_task_cut_at_the_stops(tmp_path):
    ds = load_problem_file(EVALPLUS_TINY)
    path = tmp_path / "samples.jsonl"
    written = generate_samples(
        ds, TinyEngine(), path, n=2, temperature=0.8, max_tokens=64, seed=3, progress=False
    )
    rows = read(path)
    assert (
        written == 6
        and [r["task_id"] for r in rows] == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2 + ["Mbpp/7"] * 2
    )
    assert rows[0]["completion"] == "    return a + b\n\n"  # cut at "\ndef "
    assert (
        rows[2]["completion"] == "    # think: square each item\n    return [x * x for x in xs]"
    )  # "#" lines stay
    ((prompts, config),) = TinyEngine.calls
    assert prompts[0] == ds.problems["HumanEval/0"].prompt
    assert config == SamplingConfig(n=2, temperature=0.8, max_tokens=64, stop=ds.stops, seed=3)


def test_resume_after_a_crash_neither_duplicates_nor_drops(tmp_path):
    ds = load_problem_file(EVALPLUS_TINY)
    path = tmp_path / "samples.jsonl"
    first = json.dumps({"task_id": "HumanEval/0", "completion": "    return a + b\n"})
    path.write_text(first + "\n" + '{"task_id": "HumanEval/1", "compl')  # the crash cut the last line
    assert existing_counts(path, ds) == {"HumanEval/0": 1}
    assert path.read_text() == first + "\n"  # the broken tail is gone
    generate_samples(ds, TinyEngine(), path, n=2, progress=False)
    rows = read(path)
    assert sorted(r["task_id"] for r in rows) == ["HumanEval/0"] * 2 + ["HumanEval/1"] * 2 + ["Mbpp/7"] * 2
    asked = sorted((len(p), c.n) for p, c in TinyEngine.calls)
    assert asked == [(1, 1), (2, 2)]  # one more for HumanEval/0, two for each of the others
    TinyEngine.calls.clear()
    assert generate_samples(ds, TinyEngine(), path, n=2, progress=False) == 0 and TinyEngine.calls == []


def test_ra3_eval_with_a_model_generates_then_checks(tmp_path, capsys):
    samples, out = tmp_path / "samples.jsonl", tmp_path / "results.json"
    (tmp_path / "model").mkdir()  # --model is a local directory (checked before any engine starts)
    args = [
        "eval",
        "--dataset",
        str(EVALPLUS_TINY),
        "--model",
        str(tmp_path / "model"),
        "--engine",
        "eval-test-tiny",
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--no-progress",
        "--timeout",
        "3",
    ]
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert results["samples_checked"] == 3 and results["outcomes"]["passed"] == 2  # hyp() returns 0.0: fails
    assert results["pass_at_k"]["pass@1"] == pytest.approx(2 / 3)
    assert TinyEngine.calls[0][1].temperature == 0.0  # n=1: greedy
    assert "generated 3 new samples" in capsys.readouterr().out
    assert main(args) == 0  # a rerun resumes: nothing left to generate
    assert "generated 0 new samples" in capsys.readouterr().out and len(read(samples)) == 3
