"""Benchmark: the E-step with pi and q on two engines vs on one engine (`--share-pi-q`), one run.

Both runs are `ra3 estep` on the same corpus and settings (MBPP train-split solutions, the
defaults c = 0.05, G = 4, tau = 4, 2 RL steps); the shared run keeps each role's weights in host
memory and swaps them into its one engine when the other role's turn comes. Printed side by side:
wall clock, engine start, RL, infusion, the number of swaps and their seconds, and whether the two
runs wrote the same records (they must: the swap changes where the weights live, not which).
What the shared engine saves is accelerator memory (one engine's weights and KV cache instead of
two), which this CPU benchmark cannot show; what it costs is the swaps, which it measures.

    python tools/bench_share_engine.py                      # SmolLM2-135M, vLLM, 60 snippets
    python tools/bench_share_engine.py --model tiny --backend hf-cpu --limit 0
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench_em_cost import THREADS, mbpp_corpus, ra3


def run(args: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall = ra3(*args, "--output", str(out))
    stats = json.loads((out / "stats.json").read_text())
    records = b"".join(p.read_bytes() for p in sorted(out.glob("part-*.jsonl")))
    return {"wall": wall, "stats": stats, "records": records}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="tiny, tiny-warm, smollm2, or an HF checkpoint dir")
    p.add_argument("--backend", default="vllm", choices=("vllm", "hf", "hf-cpu"))
    p.add_argument("--trainer", default="megatron", choices=("megatron", "torch"))
    p.add_argument("--limit", type=int, default=60, help="MBPP solutions in the corpus (0: all 272)")
    p.add_argument("--rl-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench_share_engine")
    a = p.parse_args()
    THREADS["OMP_NUM_THREADS"] = str(a.threads)
    from ra3_megatron.models.warm import resolve_model

    model = resolve_model(a.model)
    work = Path(a.work)
    shutil.rmtree(work / "corpus", ignore_errors=True)
    src = mbpp_corpus(work / "corpus", a.limit or None)
    args = ["estep", "--model", model, "--input", str(src), "--backend", a.backend, "--trainer", a.trainer,
            "--rl-steps", str(a.rl_steps), "--threads", str(a.threads), "--no-progress"]
    two = run(args, work / "two_engines")
    one = run(args + ["--share-pi-q"], work / "one_engine")

    def row(name: str, r: dict) -> str:
        s = r["stats"]["seconds"]
        return (f"| {name} | {r['wall']:.1f} | {s.get('load', 0):.1f} | {s.get('rl', 0):.1f} | {s['infuse']:.1f} | "
                f"{r['stats'].get('weight_swaps', '-')} | {s.get('swap', 0):.1f} |")

    n = len(list(src.glob("*.py")))
    print(f"model {a.model}; backend {a.backend}; trainer {a.trainer}; {n} MBPP solutions; RL steps {a.rl_steps}; "
          f"{a.threads} threads")
    print("| engines | wall s | engine start s | RL s | infusion s | weight swaps | swap s |")
    print("|---|---|---|---|---|---|---|")
    print(row("pi, q: two", two))
    print(row("pi, q: one (--share-pi-q)", one))
    same = one["records"] == two["records"]
    print(f"same records: {same} ({two['stats']['infusion']['records']} records)")


if __name__ == "__main__":
    main()
