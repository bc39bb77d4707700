"""Benchmark: the E-step's infusion on vLLM with the probe fast path against one scoring group per probe.

The decision probes (log q("#") before each candidate line) either come from one pass per
sequence, the top-k of vLLM's prompt log-probs with a scoring group only for a token outside
them (`probe_top_k=64`, the default), or from one scoring group per probe (`probe_top_k=0`, the
path vLLM had before). Both runs do the same infusion (RL off, so pi = q) over the same snippets
in one process, one engine each, and must write the same records. Prints the infusion's split
by part side by side, and how many probes needed the scoring group.

    python tools/bench_vllm_probe.py                          # SmolLM2-135M, 60 MBPP train solutions
    python tools/bench_vllm_probe.py --model tiny --snippets 40
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def run(model: str, corpus: Path, out: Path, top_k: int, threads: int, compiled: bool) -> dict:
    from ra3_megatron.estep.config import EStepConfig
    from ra3_megatron.estep.run import EStepRun, run_estep
    from ra3_megatron.rollout.base import create_engine

    engines = []

    def make_engine(model_dir: str):
        t0 = time.perf_counter()
        engine = create_engine("vllm", model=model_dir, probe_top_k=top_k, threads=threads, enforce_eager=not compiled)
        engine.start_seconds = time.perf_counter() - t0
        engines.append(engine)
        return engine

    cfg = EStepConfig(rl_steps=0, seed=0)
    t0 = time.perf_counter()
    stats = run_estep(EStepRun(model=model, input=str(corpus), output=str(out), progress=False), cfg,
                      make_engine=make_engine)
    wall = time.perf_counter() - t0
    probes = sum(e.probes_read for e in engines)
    fallbacks = sum(e.probe_fallbacks for e in engines)
    start = sum(e.start_seconds for e in engines)
    for e in {id(e): e for e in engines}.values():
        e.close()
    records = sorted((p.name, p.read_text(encoding="utf-8")) for p in out.glob("part-*.jsonl"))
    return {"wall": wall, "engine_start": start, "parts": stats["seconds"].get("infuse_parts", {}),
            "infuse": stats["seconds"].get("infuse", 0.0), "probes": probes, "fallbacks": fallbacks,
            "think_rate": stats["infusion"]["summary"]["think_rate"], "records": records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | an HF dir")
    ap.add_argument("--snippets", type=int, default=60, help="MBPP train solutions of 4+ lines")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--compiled", action="store_true", help="both engines with torch.compile (default on CPU: eager)")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    from bench_em_cost import mbpp_corpus  # this script's folder is on sys.path

    from ra3_megatron.models.warm import resolve_model

    model = resolve_model(a.model)
    from ra3_megatron.rollout.base import create_engine

    create_engine("vllm", model=model, threads=a.threads, enforce_eager=not a.compiled).close()  # compile caches warm for both runs
    with tempfile.TemporaryDirectory() as tmp:
        corpus = mbpp_corpus(Path(tmp) / "src", a.snippets)
        groups = run(model, corpus, Path(tmp) / "groups", 0, a.threads, a.compiled)
        fast = run(model, corpus, Path(tmp) / "fast", a.top_k, a.threads, a.compiled)
    parts = sorted(set(fast["parts"]) | set(groups["parts"]))
    print(f"\nE-step infusion on vLLM, {Path(model).name}, {a.snippets} MBPP train solutions, RL off, "
          f"{a.threads} threads, {'compiled' if a.compiled else 'eager'} (seconds)")
    print(f"| part | one scoring group per probe | top-{a.top_k} prompt log-probs |")
    print("|---|---|---|")
    for key in ["engine_start", *parts, "infuse", "wall"]:
        g = groups[key] if key in groups and not isinstance(groups[key], dict) else groups["parts"].get(key, 0.0)
        f = fast[key] if key in fast and not isinstance(fast[key], dict) else fast["parts"].get(key, 0.0)
        print(f"| {key} | {g:.1f} | {f:.1f} |")
    print(f"| probes answered by a scoring group | all | {fast['fallbacks']} of {fast['probes']} |")
    print(f"| think rate | {groups['think_rate']:.4f} | {fast['think_rate']:.4f} |")
    same = fast["records"] == groups["records"]
    print(f"\nsame records: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
