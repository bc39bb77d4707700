"""Benchmark: how full the E-step's thought-sampling calls keep their decode batch.

The E-step searches `batch_snippets` snippets in lockstep: each round sends every snippet's thought
prompts to q's engine in one `generate` call, which returns when its longest row has finished.
vLLM batches the rows of a call continuously, but the rows of the next round cannot start until
the whole call is back. On a GPU, where a decode step costs about the same for 10 rows as for 60,
the steps a call runs after most of its rows have finished are what continuous batching across
snippets (a search going on as soon as its own rows are back) would win.

This script runs the infusion on MBPP solutions with SmolLM2 and vLLM (RL off, the defaults
otherwise) and reports, over every sampling call, side by side:
- the decode steps the lockstep calls take (each call: its longest row, summed);
- the steps the same rows would take packed at the call's own width (its tokens / its rows),
  the floor continuous batching approaches;
- the row occupancy, tokens / (rows x steps): the share of the decode batch doing work.

    python tools/bench_sample_rounds.py                 # 60 MBPP solutions, SmolLM2, vLLM
    python tools/bench_sample_rounds.py --limit 0 --batch-snippets 32
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

from bench_em_cost import mbpp_corpus


class RecordingSampler:
    """q's engine, with the sizes of every `generate` call recorded."""

    def __init__(self, engine):
        self._engine = engine
        self.calls: list[tuple[int, int, int]] = []  # (rows, tokens, longest row)

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, prompts, config):
        out = self._engine.generate(prompts, config)
        lengths = [len(c.token_ids) for comps in out for c in comps]
        if lengths:
            self.calls.append((len(lengths), sum(lengths), max(lengths)))
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="tiny, tiny-warm, smollm2, or an HF checkpoint dir")
    p.add_argument("--limit", type=int, default=60, help="MBPP solutions (0: all 272)")
    p.add_argument("--batch-snippets", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench_sample_rounds")
    a = p.parse_args()

    from ra3_megatron.estep.batch import run_searches
    from ra3_megatron.estep.config import EStepConfig
    from ra3_megatron.estep.infuse import iter_snippets
    from ra3_megatron.models.warm import resolve_model
    from ra3_megatron.rollout.base import create_engine

    model = resolve_model(a.model)
    src = mbpp_corpus(Path(a.work) / "corpus", a.limit or None)
    cfg = EStepConfig(batch_snippets=a.batch_snippets, rl_steps=0)
    engine = create_engine("vllm", model=model, threads=a.threads)
    sampler = RecordingSampler(engine)
    clock: dict[str, float] = {}
    snippets = list(iter_snippets(str(src), engine.tokenizer, cfg))
    t0 = time.perf_counter()
    it = iter(snippets)
    while batch := list(itertools.islice(it, cfg.batch_snippets)):
        run_searches(batch, sampler=sampler, scorer=engine, cfg=cfg, clock=clock)
    wall = time.perf_counter() - t0
    engine.close()

    calls = sampler.calls
    rows = sum(r for r, _, _ in calls)
    tokens = sum(t for _, t, _ in calls)
    lockstep = sum(L for _, _, L in calls)
    packed = sum(math.ceil(t / r) for r, t, _ in calls)
    occupancy = tokens / sum(r * L for r, _, L in calls)
    print(f"model {a.model}; {len(snippets)} snippets; batch_snippets {a.batch_snippets}; infusion {wall:.1f} s "
          f"(sample {clock.get('sample', 0):.1f} s)")
    print(f"{len(calls)} sampling calls, {rows} rows ({rows / len(calls):.1f} a call), {tokens} tokens "
          f"(mean row {tokens / rows:.1f}, longest {max(L for _, _, L in calls)})")
    print("| decode steps | lockstep calls (each: its longest row) | packed at each call's width |")
    print("|---|---|---|")
    print(f"| sum over calls | {lockstep} | {packed} ({packed / lockstep:.2f} of lockstep) |")
    print(f"row occupancy of the lockstep calls: {occupancy:.2f}")


if __name__ == "__main__":
    main()
