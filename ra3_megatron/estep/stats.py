"""E-step statistics: counters summed over snippets, the derived rates, and their writers.

Derived figures (the spec's list):
- think_rate: chosen thoughts per line (non-blank line = action); think_rate_positions: per
  visited candidate position;
- mean_thought_tokens: tokens of the chosen "# text" (marker + text);
- mean_gain: mean gain of the chosen thoughts (always > c by construction);
- rollout_share: share of visited positions that needed a full rollout (sampling + scoring);
- reward: mean reward of the chosen option per visited position (act = 0): the E-step objective;
  sample_reward / sample_gain: mean reward / gain of q's sampled thoughts (what RL improves);
- discarded_share: speculative rollouts dropped (a thought was chosen before them in their
  lookahead window) over all rollouts run: the compute the window wastes;
- comment_position_share: candidate lines that already are comments (left out) per line.
Writers: stats.json, TensorBoard scalars (when tensorboard is installed), report.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ra3_megatron.files import atomic_write_text


@dataclass
class SearchStats:
    snippets: int = 0
    lines: int = 0
    positions: int = 0
    rollouts: int = 0
    sampled: int = 0
    failed: int = 0
    scored: int = 0
    sample_gain_sum: float = 0.0
    sample_reward_sum: float = 0.0
    chosen: int = 0
    chosen_gain_sum: float = 0.0
    chosen_tokens_sum: int = 0
    chosen_reward_sum: float = 0.0
    think_prob_sum: float = 0.0
    discarded: int = 0  # speculative rollouts dropped because a thought was chosen before them
    comment_positions: int = 0  # candidate lines left out because they already are comments

    def add_group(self, options) -> None:
        for o in options[1:]:
            self.sample_reward_sum += o.reward
            if o.gain is not None:
                self.scored += 1
                self.sample_gain_sum += o.gain

    def add_chosen(self, option, n_tokens: int) -> None:
        self.chosen += 1
        self.chosen_gain_sum += float(option.gain)
        self.chosen_reward_sum += float(option.reward)
        self.chosen_tokens_sum += int(n_tokens)

    def merge(self, other: SearchStats) -> SearchStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchStats:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return float(a) / b if b else 0.0

        return {
            "think_rate": ratio(self.chosen, self.lines),
            "think_rate_positions": ratio(self.chosen, self.positions),
            "mean_thought_tokens": ratio(self.chosen_tokens_sum, self.chosen),
            "mean_gain": ratio(self.chosen_gain_sum, self.chosen),
            "rollout_share": ratio(self.rollouts, self.positions),
            "reward": ratio(self.chosen_reward_sum, self.positions),
            "sample_reward": ratio(self.sample_reward_sum, self.sampled),
            "sample_gain": ratio(self.sample_gain_sum, self.scored),
            "fail_rate": ratio(self.failed, self.sampled),
            "think_prob": ratio(self.think_prob_sum, self.positions),
            "discarded_share": ratio(self.discarded, self.rollouts + self.discarded),
            "comment_position_share": ratio(self.comment_positions, self.lines),
        }


def write_tensorboard(log_dir: str | os.PathLike, series: dict[str, list[tuple[int, float]]]) -> bool:
    """Scalars `name -> [(step, value)]`; False (nothing written) when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard or torch not installed: stats.json and report.md still hold all
        return False
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, points in series.items():
            for step, value in points:
                writer.add_scalar(name, value, step)
    finally:
        writer.close()
    return True


_REPORT_KEYS = ("think_rate", "mean_thought_tokens", "mean_gain", "rollout_share", "reward",
                "sample_reward", "fail_rate", "comment_position_share")


def render_report(stats: dict[str, Any]) -> str:
    """report.md from the stats.json content."""
    lines = ["# E-step report", ""]
    cfg = stats.get("config", {})
    lines.append(
        f"penalty c = {cfg.get('penalty')}, G = {cfg.get('samples')}, tau = {cfg.get('horizon')}, "
        f"decision = {cfg.get('decision')}, position_fraction = {cfg.get('position_fraction')}, "
        f"RL steps = {cfg.get('rl_steps')}, seed = {cfg.get('seed')}, scored from = {cfg.get('score_from')}, "
        f"comment lines = {cfg.get('comment_lines')}"
    )
    lines += ["", "## RL steps on q", ""]
    steps = stats.get("rl", [])
    if steps:
        # A step whose searches sampled no thought trains nothing: it has no loss (shown as "-").
        keys = [k for k in (*_REPORT_KEYS, "loss", "kl") if any(k in s for s in steps)]
        lines.append("| step | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for s in steps:
            lines.append(f"| {s['step']} | " + " | ".join(f"{s[k]:.4g}" if k in s else "-" for k in keys) + " |")
    else:
        lines.append("(no RL steps)")
    total = stats.get("infusion", {})
    lines += ["", "## Infusion pass", ""]
    counts = total.get("counts", {})
    lines.append(
        f"{counts.get('snippets', 0)} snippets, {counts.get('lines', 0)} lines, "
        f"{counts.get('positions', 0)} positions visited, {counts.get('chosen', 0)} thoughts kept"
    )
    lines.append("")
    for k in _REPORT_KEYS:
        if k in total.get("summary", {}):
            lines.append(f"- {k}: {total['summary'][k]:.4g}")
    skipped = total.get("skipped", {})
    if skipped:
        lines.append("")
        lines.append("Skipped: " + ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())))
    seconds = stats.get("seconds", {})
    if seconds:
        lines += ["", "Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if not isinstance(v, dict))]
        parts = seconds.get("infuse_parts") or {}
        if parts:
            lines.append("Infusion time by engine call (and the searches' own work): "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    return "\n".join(lines) + "\n"


def write_stats(out_dir: str | os.PathLike, stats: dict[str, Any]) -> None:
    """stats.json, report.md and TensorBoard scalars (tb/) in out_dir."""
    out = Path(out_dir)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "report.md", render_report(stats))
    series: dict[str, list[tuple[int, float]]] = {}
    for s in stats.get("rl", []):
        for k, v in s.items():
            if k != "step" and isinstance(v, int | float):
                series.setdefault(f"estep_rl/{k}", []).append((int(s["step"]), float(v)))
    for k, v in stats.get("infusion", {}).get("summary", {}).items():
        series.setdefault(f"estep/{k}", []).append((int(stats.get("iteration", 0)), float(v)))
    write_tensorboard(out / "tb", series)
