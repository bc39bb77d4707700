"""Generate benchmark samples with a rollout engine, resuming a partly written samples.jsonl.

    engine = create_engine("vllm", model="runs/x/hf")
    generate_samples(dataset, engine, "samples.jsonl", n=1, temperature=0.0)

Each task gets `n` completions (the engine stops at the dataset's stop sequences; the text is
cut at the first stop again to be certain). Lines are appended and flushed per batch, so a
crash loses at most the batch in flight: on restart, tasks that already have their samples
are skipped and a truncated last line (a crash mid-write) is removed first, so no record is
duplicated or dropped.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ra3_megatron.eval.benchmarks import Dataset
from ra3_megatron.eval.prompts import truncate_at_stops
from ra3_megatron.rollout.base import RolloutEngine, SamplingConfig


def existing_counts(path: Path, dataset: Dataset) -> Counter:
    """Samples already written per task; a truncated last line is cut off the file."""
    counts: Counter = Counter()
    if not path.exists():
        return counts
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
                if not raw.endswith(b"\n"):
                    raise ValueError("no newline: the write was cut off")
            except ValueError:
                break
            task_id = dataset.resolve(rec.get("task_id")) if isinstance(rec, dict) else None
            if task_id is not None:
                counts[task_id] += 1
            good_bytes += len(raw)
    if good_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return counts


def generate_samples(
    dataset: Dataset,
    engine: RolloutEngine,
    samples_path: str | os.PathLike,
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 512,
    seed: int | None = None,
    batch_size: int = 32,
    task_ids: list[str] | None = None,
    progress: bool = True,
) -> int:
    """Append samples until every task has `n`; returns how many were written now."""
    from tqdm.auto import tqdm

    path = Path(samples_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    have = existing_counts(path, dataset)
    tasks = [t for t in (task_ids or list(dataset.problems)) if have[t] < n]
    written = 0
    with (
        open(path, "a", encoding="utf-8") as f,
        tqdm(total=len(tasks), desc="generating", disable=not progress) as bar,
    ):
        by_need: dict[int, list[str]] = {}
        for t in tasks:
            by_need.setdefault(n - have[t], []).append(t)
        for need, group in by_need.items():
            config = SamplingConfig(
                n=need,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                stop=tuple(dataset.stops),
                seed=seed,
            )
            for i in range(0, len(group), batch_size):
                batch = group[i : i + batch_size]
                outputs = engine.generate([dataset.problems[t].prompt for t in batch], config)
                for task_id, completions in zip(batch, outputs):
                    for c in completions:
                        text = truncate_at_stops(c.text, dataset.stops)
                        f.write(json.dumps({"task_id": task_id, "completion": text}) + "\n")
                        written += 1
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
    return written
