"""Benchmark: the E-step on 1 process vs a torchrun job of N ranks, side by side in one run.

Runs `ra3 estep` twice on the same corpus and model: once as one process, once under
`torchrun --nproc-per-node N` (RL, when on, over every rank: rollouts on each, one data-parallel
Megatron update, q synced in memory; the infusion sharded by file). Prints infusion snippets/s
(records over the infusion phase's wall time, the slowest rank's), the RL phase's seconds, engine
start-up, and whole wall time, and checks that both runs wrote the same records.

    python tools/bench_estep_ranks.py                          # SmolLM2-135M, stdlib json, vLLM, RL off
    python tools/bench_estep_ranks.py --rl-steps 2 --ranks 2 --threads-per-rank 1

Each rank stands for one device: the single process runs with one rank's threads
(`--threads-per-rank`), the job with that many per rank, so both compute alike and must write the
same records. On a machine with fewer cores than ranks x threads the ranks share cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


def run_estep(launcher: list[str], args: argparse.Namespace, model: str, corpus: Path, out: Path,
              threads: int) -> float:
    cmd = [*launcher, "-m", "ra3_megatron.cli.main", "estep", "--model", model, "--input", str(corpus),
           "--output", str(out), "--backend", args.backend, "--rl-steps", str(args.rl_steps), "--no-progress",
           "--threads", str(threads)]
    t0 = time.perf_counter()
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if proc.returncode:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0


def records(out: Path) -> dict[str, dict]:
    got = {}
    for shard in sorted(out.glob("part-*.jsonl")):
        for line in shard.read_text().splitlines():
            r = json.loads(line)
            got[r["id"]] = r
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | an HF checkpoint dir")
    ap.add_argument("--package", default="json", help="standard-library package to infuse (its .py files)")
    ap.add_argument("--backend", default="vllm", choices=("vllm", "hf", "hf-cpu"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads-per-rank", type=int, default=1)
    ap.add_argument("--rl-steps", type=int, default=0)
    args = ap.parse_args(argv)

    from ra3_megatron.models.warm import resolve_model

    model = str(resolve_model(args.model))
    work = Path(tempfile.mkdtemp(prefix="ra3-bench-ranks-"))
    try:
        corpus = work / "corpus"
        shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / args.package, corpus,
                        ignore=shutil.ignore_patterns("__pycache__", "tests"))
        # Each rank stands for one device: the single process gets one rank's threads, so the
        # engines compute alike (same thread count, same float sums) and the records must match.
        wall_one = run_estep([sys.executable], args, model, corpus, work / "one", args.threads_per_rank)
        wall_job = run_estep([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc-per-node={args.ranks}"], args, model, corpus, work / "job",
                             args.threads_per_rank)
        rows = []
        for name, out, wall in (("1 process", work / "one", wall_one), (f"{args.ranks} ranks", work / "job", wall_job)):
            stats = json.loads((out / "stats.json").read_text())
            n = stats["infusion"]["records"]
            secs = stats["seconds"]
            rows.append((name, n, secs.get("load", 0.0), secs.get("rl", 0.0), secs["infuse"], n / secs["infuse"], wall))
        same = records(work / "one") == records(work / "job")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nE-step on {Path(model).name}, stdlib {args.package}, backend {args.backend}, RL steps {args.rl_steps}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| run | snippets | engine + trainer start s | RL s | infusion s (last rank to finish) | snippets/s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, n, load, rl, inf, rate, wall in rows:
        print(f"| {name} | {n} | {load:.1f} | {rl:.1f} | {inf:.1f} | {rate:.2f} | {wall:.1f} |")
    print(f"\nsame records: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
