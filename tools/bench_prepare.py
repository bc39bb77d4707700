"""Benchmark: `ra3 prepare` throughput (input lines/s) over the CPython standard library.

Each configuration runs the real CLI in a fresh process (so megatron.core's import, ~5 s, is
counted, as a user pays it), on the stdlib with and without its tests (`test`, `tests`,
`idle_test` directories), with the tiny tokenizer and SmolLM2's, and prints a table. lines/s is
input lines over the pipeline's own time (`seconds` in PREFIX.summary.json: tokenizer load,
reading, chunking, dedup, tokenizing, writing); wall is the whole process; lines/cpu-s is input
lines over the process's user + system CPU time, which other load on the machine changes far less
than wall time (the machine's load average is printed before and after).

    python tools/bench_prepare.py                                  # 2 tokenizers x 2 inputs, workers 1
    python tools/bench_prepare.py --tokenizers tiny --workers 1,2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

TEST_DIRS = ("test", "tests", "idle_test")


def run_once(tokenizer: str, tests: bool, workers: int, max_tokens: int, out_dir: Path) -> dict:
    prefix = out_dir / f"{tokenizer}-{'with' if tests else 'no'}-tests-w{workers}"
    cmd = [sys.executable, "-m", "ra3_megatron.cli.main", "prepare", "--input", sysconfig.get_paths()["stdlib"],
           "--tokenizer", tokenizer, "--output", str(prefix), "--max-tokens", str(max_tokens),
           "--workers", str(workers), "--no-progress"]
    for name in () if tests else TEST_DIRS:
        cmd += ["--exclude", name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"prepare failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    summary = json.loads(Path(f"{prefix}.summary.json").read_text())
    for path in out_dir.glob(f"{prefix.name}*"):
        path.unlink()
    return {**summary, "wall": wall, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", default="tiny,smollm2")
    parser.add_argument("--tests", default="excluded,included")
    parser.add_argument("--workers", default="1")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=1, help="runs per configuration (median reported)")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}", flush=True)
    header = f"{'tokenizer':<9} {'tests':<9} {'workers':>7} {'files':>6} {'lines':>9} {'snippets':>8} " \
             f"{'tokens':>10} {'seconds':>8} {'lines/s':>9} {'wall s':>7} {'cpu s':>7} {'lines/cpu-s':>11}"
    print(header)
    print("-" * len(header), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for tokenizer in args.tokenizers.split(","):
            for tests in args.tests.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    runs = [run_once(tokenizer, tests == "included", workers, args.max_tokens, Path(tmp))
                            for _ in range(args.rounds)]
                    s = runs[0]
                    rate = statistics.median(r["lines_per_s"] for r in runs)
                    secs = statistics.median(r["seconds"] for r in runs)
                    wall = statistics.median(r["wall"] for r in runs)
                    cpu = statistics.median(r["cpu"] for r in runs)
                    print(f"{tokenizer:<9} {tests:<9} {workers:>7} {s['files']:>6,} {s['lines']:>9,} "
                          f"{s['snippets']:>8,} {s['tokens']:>10,} {secs:>8.1f} {rate:>9,.0f} {wall:>7.1f} {cpu:>7.1f} "
                          f"{s['lines'] / cpu:>11,.0f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
