"""Training metrics on rank 0: a console line every log_interval steps, metrics.jsonl, TensorBoard.

metrics.jsonl holds one JSON record per optimizer step. After a resume from step k, records of
steps > k (written after the checkpoint, before the crash) are dropped first, so the file never
holds a step twice; TensorBoard gets `purge_step=k + 1` for the same reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TB_TAGS = {
    "loss": "train/loss",
    "code_ce": "train/code_ce",
    "latent_ce": "train/latent_ce",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "step_time_s": "perf/step_time_s",
    "valid_loss": "valid/loss",
    "valid_code_ce": "valid/code_ce",
    "valid_latent_ce": "valid/latent_ce",
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, resume_step: int, total_steps: int, log_interval: int, enabled: bool):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_interval = max(1, log_interval)
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is optional: metrics.jsonl has everything
            self.writer = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = int(record["step"])
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, tag in TB_TAGS.items():
                value = record.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(tag, value, step)
        if step % self.log_interval == 0 or step == self.total_steps or "valid_loss" in record:
            print(format_line(record, self.total_steps), flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_line(r: dict[str, Any], total_steps: int) -> str:
    line = (
        f"step {r['step']:>5}/{total_steps} | loss {_fmt(r.get('loss'), '.4f')} | "
        f"code ce {_fmt(r.get('code_ce'), '.4f')} | latent ce {_fmt(r.get('latent_ce'), '.4f')} | "
        f"lr {_fmt(r.get('lr'), '.3e')} | grad norm {_fmt(r.get('grad_norm'), '.3f')} | "
        f"{_fmt(r.get('tokens_per_s'), ',.0f')} tok/s | {_fmt(r.get('step_time_s'), '.3f')} s/step"
    )
    if "valid_loss" in r:
        line += (
            f" | valid loss {_fmt(r['valid_loss'], '.4f')} (code {_fmt(r.get('valid_code_ce'), '.4f')}, "
            f"latent {_fmt(r.get('valid_latent_ce'), '.4f')})"
        )
    return line
