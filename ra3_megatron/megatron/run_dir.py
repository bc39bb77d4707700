"""Run-directory plumbing of the M-step: where the model comes from, the datasets, report.md.

`--model` may be an HF checkpoint dir (config.json + safetensors), the run dir of an earlier
mstep run (its model_config/ + checkpoints/latest), or one checkpoint dir (iter_NNNNNNN) of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError, InputError


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    kind: str  # "hf" | "mcore" (a `ra3 convert hf-to-mcore` dir) | "checkpoint" (an mstep checkpoint)
    path: Path  # where the weights are
    config_dir: Path | None  # dir with config.json + tokenizer files (None for "mcore")

    def hf_config(self):
        if self.kind == "mcore":
            from ra3_megatron.megatron.convert import read_mcore_meta

            return read_mcore_meta(self.path)[0]
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.config_dir)

    def tokenizer_dir(self) -> Path | None:
        if self.kind != "mcore":
            return self.config_dir
        from ra3_megatron.megatron.convert import read_mcore_meta

        sub = read_mcore_meta(self.path)[1].get("tokenizer")
        return self.path / sub if sub else None

    def load_into(self, chunks) -> None:
        """Collective: the source's weights into freshly built chunks (before DDP / optimizer)."""
        if self.kind == "hf":
            from ra3_megatron.megatron.model import load_hf_weights_into

            load_hf_weights_into(chunks, self.path)
        else:  # mstep checkpoints use the same {"model" | "model<i>"} layout as convert's
            from ra3_megatron.megatron.convert import load_mcore_into

            load_mcore_into(chunks, self.path)


def resolve_model(model: str | Path) -> ModelSource:
    """Classify --model: HF dir, mcore dir, an mstep run dir (its latest checkpoint) or checkpoint dir."""
    from ra3_megatron.megatron.checkpoint import STATE_FILE, latest_checkpoint
    from ra3_megatron.megatron.convert import META_FILE

    path = Path(model)
    if not path.is_dir():
        raise InputError(path, "model not found (expected an HF dir, a Megatron dir or an mstep run dir)")
    if (path / STATE_FILE).is_file():  # one checkpoint: RUN/checkpoints/iter_N
        return ModelSource(kind="checkpoint", path=path, config_dir=_config_dir(path.parent.parent, path))
    if (path / "checkpoints").is_dir():  # a run dir
        ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise InputError(path / "checkpoints", "no complete checkpoint (no `latest` file)")
        return ModelSource(kind="checkpoint", path=ckpt, config_dir=_config_dir(path, path))
    if (path / META_FILE).is_file():
        return ModelSource(kind="mcore", path=path, config_dir=None)
    if not (path / "config.json").is_file():
        raise InputError(path, "no config.json: not an HF checkpoint dir")
    if not any(path.glob("*.safetensors")):
        raise InputError(path, "no *.safetensors weights in the HF checkpoint dir")
    return ModelSource(kind="hf", path=path, config_dir=path)


def _config_dir(run: Path, where: Path) -> Path:
    cfg = run / "model_config"
    if not (cfg / "config.json").is_file():
        raise InputError(where, f"no {cfg}/config.json next to the checkpoint: cannot rebuild the model")
    return cfg


def write_model_config(hf_config, tokenizer_dir: Path | None, dst: Path) -> None:
    """config.json + tokenizer files, so that the run dir itself can be a --model later."""
    from ra3_megatron.megatron.convert_weights import copy_tokenizer_files

    if dst.exists() and (dst / "config.json").is_file():
        return  # written by the first session of this run; resumes keep it
    dst.mkdir(parents=True, exist_ok=True)
    hf_config.to_json_file(str(dst / "config.json"))
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, dst)


def check_dataset(prefix: str | Path) -> None:
    if not Path(f"{prefix}.idx").is_file() or not Path(f"{prefix}.bin").is_file():
        raise InputError(f"{prefix}.idx", "dataset not found: run `ra3 prepare` to write PREFIX.bin/.idx")


def _split_sizes(prefix: Path, split: str) -> tuple[int, list[int]]:
    """(documents, documents per split) with Megatron's own rounding of the split weights."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    try:
        weights = [float(w) for w in split.replace("/", ",").split(",")]
    except ValueError:
        raise ConfigError(f"split must be comma-separated weights like 98,2,0, got {split!r}") from None
    weights = (weights + [0.0, 0.0, 0.0])[:3]
    if sum(weights) <= 0 or min(weights) < 0:
        raise ConfigError(f"split weights must be >= 0 with a positive sum, got {split!r}")
    n = len(IndexedDataset(str(prefix)).sequence_lengths)
    bounds = [0.0]
    for w in weights:
        bounds.append(bounds[-1] + w / sum(weights))
    return n, [int(round(bounds[i + 1] * n)) - int(round(bounds[i] * n)) for i in range(3)]


def build_datasets(cfg: Any, tokenizer_dir: Path) -> tuple[Any, Any]:
    """(train, valid or None) from the prepared dataset prefix.

    Without validation (eval_batches 0) every document trains. Megatron's GPTDataset loops forever
    when asked for samples from a split without documents, so an empty split is refused here.
    """
    from ra3_megatron.data import build_mstep_datasets

    prefix = Path(cfg.data)
    check_dataset(prefix)
    split = cfg.split if cfg.eval_batches else "1,0,0"
    n_docs, per_split = _split_sizes(prefix, split)
    if per_split[0] == 0:
        raise InputError(f"{prefix}.idx", f"the train split {split!r} of {n_docs} documents is empty")
    if cfg.eval_batches and per_split[1] == 0:
        raise InputError(
            f"{prefix}.idx", f"the valid split of {split!r} over {n_docs} documents is empty: "
            "raise its weight, or set eval_batches=0"
        )
    valid_samples = cfg.eval_batches * cfg.global_batch_size if cfg.eval_batches else None
    datasets = build_mstep_datasets(
        str(prefix),
        seq_length=cfg.seq_length,
        tokenizer_dir=str(tokenizer_dir),
        train_samples=cfg.steps * cfg.global_batch_size,
        valid_samples=valid_samples,
        seed=cfg.seed,
        split=split,
        create_attention_mask=False,  # plain causal attention: the model builds the mask itself
    )
    train, valid = datasets[0], (datasets[1] if cfg.eval_batches else None)
    if train is None or len(train) == 0:
        raise InputError(f"{prefix}.idx", f"no training samples for split {split!r}")
    return train, valid


def _f(x: Any, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_report(out: Path, cfg: Any, record: dict, *, steps_run: int, seconds: float, resumed_from: Path | None) -> Path:
    """A short human-readable summary of the run (rank 0)."""
    from ra3_megatron.megatron.metrics import read_metrics

    history = read_metrics(out / "metrics.jsonl")
    first = history[0] if history else {}
    speeds = sorted(r["tokens_per_s"] for r in history[1:] if math.isfinite(r.get("tokens_per_s", math.nan)))
    median_speed = speeds[len(speeds) // 2] if speeds else record.get("tokens_per_s")
    lines = [
        "# M-step report",
        "",
        f"- model: `{cfg.model}`",
        f"- data: `{cfg.data}`",
        f"- parallel: TP={cfg.tp} PP={cfg.pp}" + (f" VPP={cfg.vpp}" if cfg.vpp else "")
        + f", distributed optimizer: {cfg.distributed_optimizer}",
        f"- batch: {cfg.global_batch_size} x {cfg.seq_length} tokens (micro-batch {cfg.micro_batch_size}),"
        f" latent weight {cfg.latent_weight}",
        f"- steps: {record.get('step', 0)} of {cfg.steps} ({steps_run} in this session"
        + (f", resumed from `{resumed_from.name}`" if resumed_from else "") + f", {seconds:.1f} s)",
        "",
        "| metric | first step | last step |",
        "|---|---|---|",
        f"| loss | {_f(first.get('loss'))} | {_f(record.get('loss'))} |",
        f"| code CE | {_f(first.get('code_ce'))} | {_f(record.get('code_ce'))} |",
        f"| latent CE | {_f(first.get('latent_ce'))} | {_f(record.get('latent_ce'))} |",
        f"| code / latent tokens per step | {first.get('code_tokens', 'n/a')} / {first.get('latent_tokens', 'n/a')}"
        f" | {record.get('code_tokens', 'n/a')} / {record.get('latent_tokens', 'n/a')} |",
        f"| lr | {_f(first.get('lr'), '.3e')} | {_f(record.get('lr'), '.3e')} |",
        f"| grad norm | {_f(first.get('grad_norm'), '.3f')} | {_f(record.get('grad_norm'), '.3f')} |",
        "",
        f"Median throughput: {_f(median_speed, ',.0f')} tokens/s.",
    ]
    if "valid_loss" in record:
        lines.append(
            f"Validation: loss {_f(record['valid_loss'])}, code CE {_f(record.get('valid_code_ce'))}, "
            f"latent CE {_f(record.get('valid_latent_ce'))}."
        )
    lines += ["", "Files: `checkpoints/` (latest: see `checkpoints/latest`), `metrics.jsonl`, `tensorboard/`"]
    if cfg.export_hf:
        lines[-1] += ", `hf/` (HF checkpoint for vLLM / evaluation)"
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
