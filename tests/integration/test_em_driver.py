"""`ra3 em` with the fake engine, the real `ra3 prepare` and a fake M-step plugged in by import
path: the run directory layout, and resume at the phase where an interrupted run stopped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ra3_megatron.cli.main import main

pytestmark = pytest.mark.integration

FAIL_MARKER = "RA3_TEST_MSTEP_FAIL_MARKER"


def fake_mstep(cfg, *, nproc=1, iteration=0):
    """Copy the model as the 'trained' one and write a metrics line; fails once when asked to."""
    marker = os.environ.get(FAIL_MARKER)
    if marker and not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError("simulated M-step crash")
    assert Path(f"{cfg.data}.bin").is_file() and Path(f"{cfg.data}.idx").is_file()
    out = Path(cfg.out)
    shutil.copytree(cfg.model, out / "hf")
    (out / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "lm_loss": 1.5 / iteration, "code_ce": 1.4}) + "\n"
    )
    return out / "hf"


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"m{i}.py").write_text(
            f"def h{i}(v):\n    # double v\n    w = v * 2\n    # then add {i}\n    return w + {i}\n"
        )
    return root


def test_em_runs_two_rounds_and_resumes_after_a_crash(tiny_model_dir, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "src")
    run_dir = tmp_path / "run"
    monkeypatch.setenv(FAIL_MARKER, str(tmp_path / "failed"))
    argv = [
        "em",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(corpus),
        "--run-dir",
        str(run_dir),
        "--iterations",
        "2",
        "--backend",
        "fake",
        "--rl-steps",
        "0",
        "--samples",
        "2",
        "--horizon",
        "2",
        "--decision",
        "force",
        "--penalty",
        "0.0",
        "--max-latent-tokens",
        "10",
        "--mstep-runner",
        "test_em_driver:fake_mstep",
        "--no-progress",
    ]
    with pytest.raises(RuntimeError, match="simulated M-step crash"):
        main(argv)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["completed"] == ["iter_1/estep", "iter_1/data"]
    estep_shards = sorted((run_dir / "iter_1" / "estep").glob("part-*.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in estep_shards]

    assert main(argv) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["completed"] == [
        f"iter_{k}/{p}" for k in (1, 2) for p in ("estep", "data", "mstep", "report")
    ]
    assert [p.stat().st_mtime_ns for p in estep_shards] == stamps, "the finished E-step was not redone"
    assert state["models"]["iter_2"] == str(run_dir / "iter_2" / "mstep" / "hf")
    for k in (1, 2):
        it = run_dir / f"iter_{k}"
        assert (it / "estep" / "manifest.json").is_file() and (it / "report.md").is_file()
        assert "E-step" in (it / "report.md").read_text()
    # round 2's E-step scored with round 1's model
    assert (
        json.loads((run_dir / "iter_2" / "estep" / "config.json").read_text())["model"]
        == state["models"]["iter_1"]
    )
    rows = [json.loads(x) for x in (run_dir / "metrics" / "em.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[1]["mstep_lm_loss"] == pytest.approx(0.75)
    report = (run_dir / "report.md").read_text()
    assert "| 1 |" in report and "| 2 |" in report

    # a finished run is a no-op; another E-step configuration on the same run dir is refused
    assert main(argv) == 0
    assert main([*argv, "--penalty", "0.2"]) == 2


def test_em_round_with_the_real_mstep(tiny_model_dir, tmp_path):
    """One round with `ra3 mstep` (Megatron-Core, a subprocess): its HF export is the round's model."""
    pytest.importorskip("megatron.core")
    corpus = _corpus(tmp_path / "src")
    run_dir = tmp_path / "run"
    argv = [
        "em",
        "--model",
        str(tiny_model_dir),
        "--input",
        str(corpus),
        "--run-dir",
        str(run_dir),
        "--iterations",
        "1",
        "--backend",
        "fake",
        "--rl-steps",
        "0",
        "--samples",
        "2",
        "--horizon",
        "2",
        "--decision",
        "force",
        "--penalty",
        "0.0",
        "--max-latent-tokens",
        "10",
        "--no-progress",
        "--mstep.steps=2",
        "--mstep.micro-batch-size=1",
        "--mstep.global-batch-size=2",
        "--mstep.seq-length=64",
    ]
    assert main(argv) == 0
    state = json.loads((run_dir / "state.json").read_text())
    hf = Path(state["models"]["iter_1"])
    assert (hf / "config.json").is_file() and list(hf.glob("*.safetensors"))
    row = json.loads((run_dir / "metrics" / "em.jsonl").read_text().splitlines()[0])
    assert row["mstep_step"] == 2 and row["mstep_loss"] > 0 and "mstep_latent_ce" in row


def test_later_rounds_reuse_the_engines_with_new_weights(tiny_model_dir, tmp_path, monkeypatch):
    """Round 2 gets round 1's engines back with the new model's weights instead of starting
    new ones, and its E-step writes exactly what fresh engines would have written."""
    from ra3_megatron.rollout.pool import EnginePool

    corpus = _corpus(tmp_path / "src")

    def argv(run_dir):
        return ["em", "--model", str(tiny_model_dir), "--input", str(corpus), "--run-dir", str(run_dir),
                "--iterations", "2", "--backend", "fake", "--rl-steps", "0", "--samples", "2", "--horizon", "2",
                "--decision", "force", "--penalty", "0.0", "--max-latent-tokens", "10",
                "--mstep-runner", "test_em_driver:fake_mstep", "--no-progress"]

    assert main(argv(tmp_path / "pooled")) == 0
    state = json.loads((tmp_path / "pooled" / "state.json").read_text())
    assert state["engines"] == {"started": 1, "reloaded": 1}

    class Fresh(EnginePool):  # no reuse: every acquisition starts an engine
        def acquire(self, model):
            for engine in self.idle:
                engine.close()
            self.idle.clear()
            return super().acquire(model)

    monkeypatch.setattr("ra3_megatron.em.loop.EnginePool", Fresh)
    assert main(argv(tmp_path / "fresh")) == 0
    assert json.loads((tmp_path / "fresh" / "state.json").read_text())["engines"] == {"started": 2, "reloaded": 0}
    for k in (1, 2):
        shards = [sorted((tmp_path / run / f"iter_{k}" / "estep").glob("part-*.jsonl")) for run in ("pooled", "fresh")]
        assert [p.read_text() for p in shards[0]] == [p.read_text() for p in shards[1]]
