"""A thought that says nothing must not pay: how often does a fixed sentence pass c?

At every candidate position of some standard-library files, a sampler that always writes the
same content-free sentence ("Handle the remaining cases." by default) offers it as the only
thought; pi (SmolLM2-135M by default) scores it against `<act>` through the real E-step search.
The penalty is set out of reach so no thought is ever inserted and every position is scored on
the plain code before it; the gains are then compared with c afterwards. Two scorings side by
side, in one run on the same positions:

- `line`: the scored horizon starts at line t's newline (the original scoring: `<act>` pays for
  predicting the indentation, which the thought's comment line has already shown);
- `content`: it starts at line t's first non-space token; the newline and indentation are
  context for both options (the current default, `EStepConfig.score_from`).

    python tools/bench_null_thought.py                          # 20 stdlib files, c = 0.05
    python tools/bench_null_thought.py --files 40 --penalties 0.01,0.05,0.2 --json out.json

The pass rate under `content` is what is left for the penalty to calibrate (the `null` arm of a
comparison measures the same on training outcomes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ra3_megatron.rollout.base import Completion, per_prompt


class FixedThoughtSampler:
    """q replaced by a constant: every sample is `sentence` followed by its newline."""

    def __init__(self, tokenizer, sentence: str):
        self.tokenizer = tokenizer
        self.ids = tuple(tokenizer.encode(" " + sentence + "\n", add_special_tokens=False))
        self.text = " " + sentence

    def generate(self, prompts, config):
        return [[Completion(text=self.text, token_ids=self.ids, finish_reason="stop")] * c.n
                for c in per_prompt(config, len(prompts))]

    def score_groups(self, groups):  # decisions are forced: q is never asked to score
        raise NotImplementedError

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def load_weights(self, hf_dir: str) -> None:
        pass

    def close(self) -> None:
        pass


def stdlib_snippets(tokenizer, files: int, max_tokens: int, seed: int) -> list[tuple[str, str]]:
    """Snippets of `files` stdlib modules drawn at random (seeded; tests and vendored code excluded)."""
    from ra3_megatron.data.chunking import chunk_snippets
    from ra3_megatron.models.tiny import stdlib_files

    pool = stdlib_files(10_000)
    rng = np.random.default_rng(seed)
    out = []
    for path in sorted(rng.choice(len(pool), size=min(files, len(pool)), replace=False)):
        try:
            text = pool[path].read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for k, chunk in enumerate(chunk_snippets(text, max_tokens=max_tokens, tokenizer=tokenizer, python=True)):
            out.append((f"{pool[path].name}#{k}", chunk))
    return out


def gains(snippets, sampler, scorer, score_from: str, horizon: int) -> np.ndarray:
    from ra3_megatron.estep.batch import run_searches
    from ra3_megatron.estep.config import EStepConfig

    # "default": the checkout's own scoring, so an older checkout (before `score_from`) runs too
    extra = {} if score_from == "default" else {"score_from": score_from}
    cfg = EStepConfig(decision="force", samples=1, penalty=1e9, horizon=horizon, batch_snippets=8, **extra)
    results = run_searches(snippets, sampler=sampler, scorer=scorer, cfg=cfg, phase="null-thought")
    return np.array([o.gain for r in results for g in r.groups for o in g.options if o.kind == "think"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="HF dir or an embedded model (smollm2, tiny-warm)")
    p.add_argument("--sentence", default="Handle the remaining cases.")
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--max-snippet-tokens", type=int, default=512)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--penalties", default="0.05", help="comma-separated c values to report")
    p.add_argument("--scorings", default="line,content",
                   help="which scorings to run: line, content, or default (the checkout's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from ra3_megatron.models.warm import resolve_model
    from ra3_megatron.rollout.base import create_engine

    scorer = create_engine("hf-cpu", model=resolve_model(args.model), threads=args.threads)
    sampler = FixedThoughtSampler(scorer.tokenizer, args.sentence)
    snippets = stdlib_snippets(scorer.tokenizer, args.files, args.max_snippet_tokens, args.seed)
    penalties = [float(c) for c in args.penalties.split(",")]
    print(f"{len(snippets)} snippets from {args.files} stdlib files; sentence {args.sentence!r}; model {args.model}")
    rows = {}
    for score_from in [s.strip() for s in args.scorings.split(",") if s.strip()]:
        t0 = time.perf_counter()
        g = gains(snippets, sampler, scorer, score_from, args.horizon)
        rows[score_from] = {"positions": len(g), "mean_gain": float(g.mean()), "seconds": time.perf_counter() - t0,
                            **{f"pass_rate@{c:g}": float((g > c).mean()) for c in penalties}}
        print(f"  {score_from}: {len(g)} positions in {rows[score_from]['seconds']:.0f} s", flush=True)
    scorer.close()
    head = ["scoring", "positions", "mean gain", *(f"passes c={c:g}" for c in penalties), "seconds"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, r in rows.items():
        cells = [name, str(r["positions"]), f"{r['mean_gain']:+.4f}",
                 *(f"{100 * r[f'pass_rate@{c:g}']:.1f}%" for c in penalties), f"{r['seconds']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
