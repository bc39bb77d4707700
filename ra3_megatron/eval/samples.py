"""EvalPlus-style samples in; per-task results, per-sample details and pass@k out.

samples.jsonl: one JSON object per line with `task_id` and either `completion` (appended to
the problem's code prompt, e.g. HumanEval's function header) or `solution` (the whole
program). A bad line (truncated JSON, unknown task_id, missing or non-string fields) raises
InputError naming the file and line.

Outputs of `write_results(out, ...)`: `out` (JSON: pass@k for each k in `ks` that every
checked task has enough samples for, outcome counts, per-task n / correct / pass@k) and
`<out stem>.details.jsonl` (one line per sample: task_id, line, status, reason, seconds).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ra3_megatron.core.passk import estimate_pass_at_k
from ra3_megatron.errors import InputError
from ra3_megatron.eval.benchmarks import Dataset, jsonl_text_lines
from ra3_megatron.eval.checker import Outcome

STATUSES = ("passed", "failed", "timed_out", "error")


@dataclass(frozen=True)
class Sample:
    task_id: str  # the dataset's canonical id
    program: str
    line: int  # 1-based line in the samples file


def read_samples(path: str | os.PathLike, dataset: Dataset) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "samples file not found")
    samples = [parse_sample(raw, dataset, path, number) for number, raw in jsonl_text_lines(path)]
    if not samples:
        raise InputError(path, "no samples in the file")
    return samples


def parse_sample(raw: str, dataset: Dataset, path, number: int) -> Sample:
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg}; truncated line?)", number) from None
    if not isinstance(rec, dict):
        raise InputError(
            path, "each line must be a JSON object with task_id and completion or solution", number
        )
    if "task_id" not in rec:
        raise InputError(path, "missing task_id", number)
    task_id = dataset.resolve(rec["task_id"])
    if task_id is None:
        raise InputError(path, f"unknown task_id {rec['task_id']!r} for dataset {dataset.name}", number)
    fields = [k for k in ("solution", "completion") if k in rec]
    if not fields:
        raise InputError(path, f"task {task_id}: missing completion (or solution)", number)
    if not isinstance(rec[fields[0]], str):
        raise InputError(path, f"task {task_id}: {fields[0]} must be a string", number)
    program = dataset.problems[task_id].program(**{fields[0]: rec[fields[0]]})
    return Sample(task_id, program, number)


def summarize(dataset: Dataset, samples: list[Sample], outcomes: list[Outcome], ks: list[int]) -> dict:
    n, correct = Counter(), Counter()
    for s, o in zip(samples, outcomes):
        n[s.task_id] += 1
        correct[s.task_id] += o.passed
    tasks = [t for t in dataset.problems if t in n]
    totals = np.array([n[t] for t in tasks])
    corrects = np.array([correct[t] for t in tasks])
    usable = [k for k in ks if (totals >= k).all()]
    per_k = {k: estimate_pass_at_k(totals, corrects, k) for k in usable}
    per_task = {
        t: {
            "n": int(totals[i]),
            "correct": int(corrects[i]),
            **{f"pass@{k}": float(per_k[k][i]) for k in usable},
        }
        for i, t in enumerate(tasks)
    }
    counts = Counter(o.status for o in outcomes)
    return {
        "dataset": dataset.name,
        "tasks_checked": len(tasks),
        "tasks_in_dataset": len(dataset.problems),
        "samples_checked": len(samples),
        "pass_at_k": {f"pass@{k}": float(per_k[k].mean()) for k in usable},
        "pass_at_k_skipped": [k for k in ks if k not in usable],
        "outcomes": {s: counts.get(s, 0) for s in STATUSES},
        "per_task": per_task,
    }


def details_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return (
        out.with_name(out.stem + ".details.jsonl") if out.suffix == ".json" else Path(f"{out}.details.jsonl")
    )


def write_results(
    out: str | os.PathLike, results: dict, samples: list[Sample], outcomes: list[Outcome]
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    index = defaultdict(int)
    details = details_path(out)
    with open(details, "w", encoding="utf-8") as f:
        for s, o in zip(samples, outcomes):
            rec = {
                "task_id": s.task_id,
                "sample": index[s.task_id],
                "line": s.line,
                "passed": o.passed,
                "status": o.status,
                "reason": o.reason,
                "seconds": round(o.seconds, 4),
            }
            index[s.task_id] += 1
            f.write(json.dumps(rec) + "\n")
    out.write_text(json.dumps({**results, "details": str(details)}, indent=2) + "\n")
    return details


def format_table(results: dict) -> str:
    o = results["outcomes"]
    rows = [
        f"dataset {results['dataset']}: {results['tasks_checked']}/{results['tasks_in_dataset']} tasks, "
        f"{results['samples_checked']} samples",
        f"  passed {o['passed']}   failed {o['failed']}   timed out {o['timed_out']}   error {o['error']}",
        f"  {'metric':<10}{'value':>10}",
    ]
    rows += [f"  {name:<10}{100 * value:>9.2f}%" for name, value in results["pass_at_k"].items()]
    if results["pass_at_k_skipped"]:
        rows.append(f"  (pass@k skipped for k={results['pass_at_k_skipped']}: some tasks have fewer samples)")
    return "\n".join(rows)
