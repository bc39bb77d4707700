"""The RA3 M-step trainer on Megatron-Core: NTP with the latent-aware loss, resumable.

Run under torchrun (any TP x PP x DP that divides the world size; gloo on CPU, nccl on GPU):

    torchrun --nproc-per-node 2 -m ra3_megatron.cli.main mstep --model HF_DIR --data PREFIX \\
        --out RUN_DIR --tp 2 --steps 100 --micro-batch-size 2 --global-batch-size 8 --seq-length 256

RUN_DIR receives checkpoints/ (atomic, `latest` pointer), metrics.jsonl, tensorboard/, report.md,
config.json, model_config/ (the HF config and tokenizer, so a run dir can be a --model) and hf/
(the final weights as an HF checkpoint for vLLM and evaluation). Starting again with the same
RUN_DIR resumes from checkpoints/latest.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ra3_megatron.errors import ConfigError

MSTEP_PATHS = ("model", "data", "out")


@dataclass(kw_only=True)
class MStepConfig:
    # The three paths (MSTEP_PATHS) are filled per round by the EM loop; `ra3 mstep` requires them.
    model: str = ""  # HF checkpoint dir, or a run dir / checkpoint dir of an earlier mstep run
    data: str = ""  # dataset prefix written by `ra3 prepare` (PREFIX.bin/.idx + PREFIX_classes.*)
    out: str = ""  # run dir
    tokenizer: str | None = None  # default: the model's tokenizer
    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    steps: int = 100
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: int = 256
    lr: float = 3e-4
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 0
    lr_decay_style: str = "cosine"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    latent_weight: float = 1.0  # lambda_latent: weight of the thought tokens' CE
    distributed_optimizer: bool = False
    bf16: bool | None = None  # None: bf16 on a GPU, fp32 on CPU
    transformer_impl: str = "auto"
    fp8: str | None = None  # "hybrid" | "e4m3": FP8 through Transformer Engine (GPU only; refused elsewhere)
    fp8_recipe: str = "delayed"  # "delayed" | "tensorwise" | "blockwise" | "mxfp8"
    sequence_parallel: bool = False
    seed: int = 1234
    split: str = "98,2,0"  # train,valid,test document split of the prepared dataset
    eval_interval: int = 0  # steps between validation passes (0: only at the end)
    eval_batches: int = 0  # global batches per validation pass (0: no validation)
    save_interval: int = 0  # steps between checkpoints (0: only the final one)
    log_interval: int = 1
    resume: bool = True  # continue from RUN_DIR/checkpoints/latest when it exists
    export_hf: bool = True  # write RUN_DIR/hf at the end

    def validate(self) -> None:
        missing = [f"--{name}" for name in MSTEP_PATHS if not getattr(self, name)]
        if missing:
            raise ConfigError(f"the M-step needs {', '.join(missing)}")
        if self.steps < 1 or self.micro_batch_size < 1 or self.global_batch_size < 1 or self.seq_length < 2:
            raise ConfigError("steps, micro_batch_size, global_batch_size must be >= 1 and seq_length >= 2")
        if self.latent_weight < 0:
            raise ConfigError(f"latent_weight must be >= 0, got {self.latent_weight}")


def save_mstep_config(cfg: MStepConfig, path: Path) -> Path:
    """The JSON file `ra3 mstep --config` reads (how a launcher hands a subprocess its config)."""
    from ra3_megatron.files import atomic_write_text

    atomic_write_text(path, json.dumps(asdict(cfg), indent=1) + "\n")
    return path


def load_mstep_config(path: str | Path) -> MStepConfig:
    from ra3_megatron.errors import InputError

    try:
        return MStepConfig(**json.loads(Path(path).read_text(encoding="utf-8")))
    except OSError as exc:
        raise InputError(path, f"cannot read the M-step config: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON: {exc.msg}", line=exc.lineno) from None
    except TypeError as exc:  # not an object, or an unknown field
        raise InputError(path, f"not an MStepConfig: {exc}") from None


def _engine_config(cfg: MStepConfig):
    from ra3_megatron.megatron.engine import EngineConfig
    from ra3_megatron.megatron.optim import OptimConfig

    return EngineConfig(
        micro_batch_size=cfg.micro_batch_size,
        global_batch_size=cfg.global_batch_size,
        seq_length=cfg.seq_length,
        bf16=cfg.bf16,
        transformer_impl=cfg.transformer_impl,
        fp8=cfg.fp8,
        fp8_recipe=cfg.fp8_recipe,
        sequence_parallel=cfg.sequence_parallel,
        optim=OptimConfig(
            lr=cfg.lr,
            min_lr=cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            decay_steps=cfg.steps,
            lr_decay_style=cfg.lr_decay_style,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            clip_grad=cfg.clip_grad,
            use_distributed_optimizer=cfg.distributed_optimizer,
        ),
    )


def _record(step: int, result, seconds: float, seq_length: int, gbs: int) -> dict:
    code, latent = result.stats.get("code ce", [0.0, 0.0]), result.stats.get("latent ce", [0.0, 0.0])
    return {
        "step": step,
        "loss": result.mean("lm loss"),
        "code_ce": result.mean("code ce"),
        "latent_ce": result.mean("latent ce"),
        "code_tokens": int(code[1]),
        "latent_tokens": int(latent[1]),
        "lr": result.lr,
        "grad_norm": result.grad_norm,
        "skipped": result.skipped,
        "step_time_s": seconds,
        "tokens_per_s": gbs * seq_length / seconds if seconds > 0 else float("nan"),
    }


def _validate(engine, valid_ds, cfg: MStepConfig, loss) -> dict:
    from ra3_megatron.megatron.batches import microbatches
    from ra3_megatron.megatron.engine import data_parallel_rank, data_parallel_size

    it = microbatches(
        valid_ds, consumed_samples=0, micro_batch_size=cfg.micro_batch_size,
        dp_rank=data_parallel_rank(), dp_size=data_parallel_size(),
    )
    stats = engine.evaluate(it, loss, engine.num_microbatches * cfg.eval_batches)

    def mean(name):
        s, c = stats.get(name, [0.0, 0.0])
        return s / c if c else float("nan")

    return {"valid_loss": mean("lm loss"), "valid_code_ce": mean("code ce"), "valid_latent_ce": mean("latent ce")}


def run_mstep(cfg: MStepConfig) -> dict:
    """Collective (every rank calls it). Returns the final metrics record (on every rank)."""
    from ra3_megatron.megatron import run_dir as rd
    from ra3_megatron.megatron.batches import microbatches
    from ra3_megatron.megatron.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        remove_stale_temporaries,
        save_checkpoint,
    )
    from ra3_megatron.megatron.engine import (
        MegatronEngine,
        build_chunks,
        data_parallel_rank,
        data_parallel_size,
    )
    from ra3_megatron.megatron.forward_step import latent_ce_loss
    from ra3_megatron.megatron.metrics import MetricsLogger
    from ra3_megatron.megatron.parallel import ParallelConfig, init_distributed, is_rank0

    cfg.validate()
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    source = rd.resolve_model(cfg.model)  # bad input fails here, before any process group exists
    rd.check_dataset(cfg.data)
    init_distributed(ParallelConfig(tp=cfg.tp, pp=cfg.pp, vpp=cfg.vpp, seed=cfg.seed))
    hf_config = source.hf_config()
    tokenizer_dir = Path(cfg.tokenizer) if cfg.tokenizer else source.tokenizer_dir()
    if tokenizer_dir is None:
        raise ConfigError(f"{cfg.model}: the model has no tokenizer; pass --tokenizer")
    if is_rank0():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        rd.write_model_config(hf_config, tokenizer_dir, out / "model_config")
    remove_stale_temporaries(ckpt_root)

    resume_from = latest_checkpoint(ckpt_root) if cfg.resume else None
    engine_cfg = _engine_config(cfg)
    chunks = build_chunks(hf_config, engine_cfg)
    if resume_from is None:
        source.load_into(chunks)
    engine = MegatronEngine(engine_cfg, chunks, hf_config)
    step, consumed = 0, 0
    if resume_from is not None:
        meta = load_checkpoint(engine, resume_from)
        step, consumed = int(meta["step"]), int(meta["consumed_samples"])
        if is_rank0():
            print(f"resumed from {resume_from} (step {step}, {consumed} samples consumed)", flush=True)

    train_ds, valid_ds = rd.build_datasets(cfg, tokenizer_dir)
    loss = latent_ce_loss(cfg.latent_weight)
    logger = MetricsLogger(out, resume_step=step, total_steps=cfg.steps, log_interval=cfg.log_interval, enabled=is_rank0())
    it = microbatches(
        train_ds, consumed_samples=consumed, micro_batch_size=cfg.micro_batch_size,
        dp_rank=data_parallel_rank(), dp_size=data_parallel_size(),
    )
    record: dict = {}
    started = time.perf_counter()
    first_step = step
    while step < cfg.steps:
        t0 = time.perf_counter()
        result = engine.train_step(it, loss)
        step += 1
        consumed += cfg.global_batch_size
        record = _record(step, result, time.perf_counter() - t0, cfg.seq_length, cfg.global_batch_size)
        last = step == cfg.steps
        if cfg.eval_batches and valid_ds is not None and (last or (cfg.eval_interval and step % cfg.eval_interval == 0)):
            record.update(_validate(engine, valid_ds, cfg, loss))
        logger.log(record)
        if last or (cfg.save_interval and step % cfg.save_interval == 0):
            save_checkpoint(engine, ckpt_root, step=step, consumed_samples=consumed)
    logger.close()
    elapsed = time.perf_counter() - started
    if not record:  # resumed a finished run: report its last logged step
        from ra3_megatron.megatron.metrics import read_metrics

        record = (read_metrics(out / "metrics.jsonl") or [{}])[-1]
    if cfg.export_hf:
        engine.save_hf(out / "hf", tokenizer_dir=tokenizer_dir)
    if is_rank0():
        rd.write_report(out, cfg, record, steps_run=step - first_step, seconds=elapsed, resumed_from=resume_from)
    return record
