"""What a GRPO run writes: metrics.jsonl, TensorBoard scalars, a progress bar, report.md + curves.png.

metrics.jsonl holds one JSON record per step (step 0: held-out pass@1 before training). On resume
from step k, records of steps > k (written before a crash, after the last checkpoint) are dropped
first and TensorBoard gets `purge_step=k + 1`, so no step is ever logged twice.
The report's plot needs matplotlib (requirements/cpu.txt); without it report.md says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ra3_megatron.files import atomic_write_text

_GROUPS = {
    "rollout": ("reward_mean", "reward_std", "pass_rate", "signal_groups", "response_tokens", "truncated"),
    "train": ("loss", "pg_loss", "kl", "clip_frac", "ratio", "grad_norm", "tokens", "rows", "logprob_gap"),
    "eval": ("heldout_pass1",),
    "time": ("rollout_s", "reward_s", "train_s", "sync_s", "eval_s"),
}
TB_TAGS = {key: f"{group}/{key}" for group, keys in _GROUPS.items() for key in keys}


def read_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class RunLog:
    def __init__(self, run_dir: str | Path, *, resume_step: int, total_steps: int, progress: bool = True):
        self.run = Path(run_dir)
        self.path = self.run / "metrics.jsonl"
        kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run / "tensorboard"), purge_step=max(resume_step, -1) + 1)
        except ImportError:  # tensorboard is optional: metrics.jsonl has everything
            pass
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=max(resume_step, 0), desc="grpo", unit="step")

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, tag in TB_TAGS.items():
                if _finite(record.get(key)):
                    self.writer.add_scalar(tag, record[key], step)
            self.writer.flush()
        if self.bar is not None and step > 0:
            post = {k: f"{record[k]:.3f}" for k in ("reward_mean", "heldout_pass1") if _finite(record.get(k))}
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write_report(self, cfg) -> dict[str, Any]:
        """summary.json, curves.png (when matplotlib is there) and report.md; returns the summary."""
        records = read_records(self.path)
        summary = summarize(records)
        atomic_write_text(self.run / "summary.json", json.dumps(summary, indent=1) + "\n")
        plot = plot_curves(records, self.run / "curves.png")
        atomic_write_text(self.run / "report.md", render_report(summary, cfg.to_dict(), plot))
        return summary


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(records: list[dict[str, Any]], window: int = 5) -> dict[str, Any]:
    train = [r for r in records if r["step"] > 0 and "reward_mean" in r]
    rewards = [r["reward_mean"] for r in train]
    evals = [(r["step"], r["heldout_pass1"]) for r in records if "heldout_pass1" in r]
    return {
        "steps": len(train),
        "reward_first": _mean(rewards[:window]),  # mean over the first / last `window` steps
        "reward_last": _mean(rewards[-window:]),
        "reward_best": max(rewards, default=float("nan")),
        "heldout_pass1": evals,
        "heldout_first": evals[0][1] if evals else None,
        "heldout_last": evals[-1][1] if evals else None,
        "seconds": sum(r.get(k, 0.0) for r in records for k in _GROUPS["time"]),
    }


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in records if r["step"] > 0 and "reward_mean" in r]
    evals = [r for r in records if "heldout_pass1" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in train]
    ax1.plot(steps, [r["reward_mean"] for r in train], label="mean reward", alpha=0.5)
    w = 5
    if len(train) >= w:
        smooth = [_mean([r["reward_mean"] for r in train[max(0, i - w + 1) : i + 1]]) for i in range(len(train))]
        ax1.plot(steps, smooth, label=f"mean reward ({w}-step avg)")
    ax1.plot(steps, [r["pass_rate"] for r in train], label="pass@G of the step's problems", alpha=0.5)
    ax1.set(xlabel="step", ylabel="reward", title="training rollouts", ylim=(-0.02, 1.02))
    ax1.legend(fontsize=8)
    ax2.plot([r["step"] for r in evals], [r["heldout_pass1"] for r in evals], marker="o")
    ax2.set(xlabel="step", ylabel="pass@1 (greedy)", title="held-out problems", ylim=(-0.02, 1.02))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def render_report(summary: dict[str, Any], config: dict[str, Any], plot: Path | None) -> str:
    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = [
        "# GRPO RLVR run",
        "",
        f"- steps: {summary['steps']}",
        f"- mean reward, first 5 steps: {f(summary['reward_first'])}; last 5 steps: {f(summary['reward_last'])}; "
        f"best step: {f(summary['reward_best'])}",
        f"- held-out greedy pass@1: before {f(summary['heldout_first'])}, last {f(summary['heldout_last'])}",
        f"- time in rollouts, rewards, training, weight sync and evaluation: {summary['seconds']:.1f} s",
        "",
        "![reward and held-out pass@1](curves.png)" if plot else "(no plot: matplotlib is not installed)",
        "",
        "## Held-out pass@1",
        "",
        "| step | pass@1 |",
        "|---|---|",
        *[f"| {s} | {f(v)} |" for s, v in summary["heldout_pass1"]],
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(config, indent=1),
        "```",
        "",
        "Per-step metrics: metrics.jsonl; TensorBoard: `tensorboard --logdir tensorboard`.",
        "",
    ]
    return "\n".join(lines)
