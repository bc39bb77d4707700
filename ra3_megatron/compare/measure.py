"""One arm's measurements with one engine: held-out CE (plain and thinking), training-split CE,
pass@1. Everything per snippet / per task is kept, so the report can pair arms."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ra3_megatron.compare.config import CompareConfig
from ra3_megatron.core.latent import InfusedSnippet
from ra3_megatron.estep.thinking import read_snippets, think_summary


def _log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def measure_arm(arm: str, engine, cfg: CompareConfig, *, heldout: Sequence[tuple[str, str]],
                train: Sequence[InfusedSnippet], thinking: bool, out_dir: Path,
                progress: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    plain = read_snippets(heldout, engine, cfg.estep, mode="plain")
    body: dict[str, Any] = {
        "heldout": {"ids": [r[0].snippet_id for r in plain], "nll": [r[0].nll for r in plain],
                    "tokens": [r[0].tokens for r in plain]},
    }
    _log(f"{arm}: held-out code read without thoughts ({len(plain)} snippets, {time.perf_counter() - t0:.0f} s)")
    if thinking:
        t1 = time.perf_counter()
        think = read_snippets(heldout, engine, cfg.estep, mode="think", samples=cfg.think_samples)
        mismatched = sum(r.tokens != p[0].tokens for rs, p in zip(think, plain) for r in rs)
        body["heldout_thinking"] = {
            "nll": [sum(r.nll for r in rs) / len(rs) for rs in think],
            "tokens": [rs[0].tokens for rs in think],
            "token_count_mismatches": mismatched,  # 0 unless a tokenizer breaks the piece invariant
            **think_summary(think),
        }
        _log(f"{arm}: held-out code read with its own thoughts, {cfg.think_samples} samples "
             f"(think rate {body['heldout_thinking']['think_rate']:.3f}, {time.perf_counter() - t1:.0f} s)")
    subset = list(train[: cfg.train_ce_snippets])
    given = read_snippets([(s.id, s.text) for s in subset], engine, cfg.estep, mode="given",
                          given={s.id: {t.line: t.text for t in s.thoughts} for s in subset})
    body["train"] = {"nll": [r[0].nll for r in given], "tokens": [r[0].tokens for r in given],
                     "thoughts": sum(r[0].thoughts for r in given)}
    for name in cfg.pass1:
        t1 = time.perf_counter()
        body.setdefault("pass1", {})[name] = pass_at_1(engine, name, out_dir / f"{name}.samples.jsonl", cfg,
                                                       progress=progress)
        got = body["pass1"][name]
        _log(f"{arm}: {name} pass@1 {sum(got['passed'])}/{len(got['passed'])} ({time.perf_counter() - t1:.0f} s)")
    body["seconds"] = round(time.perf_counter() - t0, 1)
    return body


def pass_at_1(engine, name: str, samples: Path, cfg: CompareConfig, *, progress: bool) -> dict[str, Any]:
    """Greedy pass@1 on a benchmark (first `pass1_limit` tasks), checked in the sandbox."""
    from ra3_megatron.eval.benchmarks import load_dataset
    from ra3_megatron.eval.checker import check_many
    from ra3_megatron.eval.generate import generate_samples
    from ra3_megatron.eval.samples import read_samples
    from ra3_megatron.eval.sandbox import SandboxConfig, SandboxPool

    dataset = load_dataset(name)
    task_ids = list(dataset.problems)[: cfg.pass1_limit] if cfg.pass1_limit else list(dataset.problems)
    generate_samples(dataset, engine, samples, n=1, temperature=0.0, max_tokens=cfg.pass1_max_tokens,
                     seed=cfg.seed, task_ids=task_ids, progress=progress)
    got = {s.task_id: s for s in read_samples(samples, dataset)}
    chosen = [got[t] for t in task_ids]
    with SandboxPool(SandboxConfig()) as pool:
        outcomes = check_many([(dataset.problems[s.task_id], s.program) for s in chosen], pool=pool,
                              progress=progress, desc=f"{name} pass@1")
        mode = pool.mode
    return {"task_ids": task_ids, "passed": [int(o.passed) for o in outcomes], "sandbox": mode}
