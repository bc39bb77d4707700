"""`ra3 estep`: one E-step (RL on the latent thoughts, then the infusion pass) over a corpus.

    ra3 estep --model HF_DIR --input src/ --output out/estep [--penalty 0.05] [--samples 4]
              [--horizon 4] [--rl-steps 2] [--backend vllm|hf|fake] [--trainer megatron|torch]

Writes OUTPUT/part-*.jsonl shards of records {"id", "text", "thoughts": [{"line", "text", "gain"}]},
OUTPUT/manifest.json (what `ra3 prepare --input OUTPUT` reads), stats.json, report.md and
TensorBoard scalars (OUTPUT/tb). Every EStepConfig field is a flag (`--position-fraction 0.5`).
Rerun the same command to resume after a crash. Several workers share one output with
`--workers W --worker-rank R` (default: WORLD_SIZE / RANK from the environment). Under torchrun
with the Megatron trainer, RL on q runs on every rank (`--rl-ranks all`: each searches its share of
the snippets, one data-parallel update at `--tp`/`--pp`, q synced into every rank's engine in
memory); otherwise worker 0 runs RL and the others wait for q:

    torchrun --nproc-per-node 2 -m ra3_megatron.cli.main estep --model M --input src/ --output out \
        --backend vllm --rl-steps 2
"""

from __future__ import annotations

import argparse
import os

from ra3_megatron.cli.config_args import add_config_arguments, config_from_args
from ra3_megatron.cli.rl_job import (
    add_rl_job_arguments,
    data_parallel_size,
    job_process_group,
    resolve_rl_ranks,
    rows_per_update,
)
from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.config import EStepConfig


def add_estep_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per EStepConfig field (`--rl-steps`, `--position-fraction`, ...)."""
    add_config_arguments(parser.add_argument_group("E-step"), EStepConfig, prefix="estep")


def estep_config_from_args(args: argparse.Namespace) -> EStepConfig:
    return config_from_args(args, EStepConfig, prefix="estep")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engines")
    group.add_argument("--backend", choices=("vllm", "hf", "fake"), default="hf", help="rollout engine (default: hf)")
    group.add_argument("--trainer", choices=("auto", "megatron", "torch"), default="auto",
                       help="RL trainer for q: megatron (the MegatronEngine) or torch (transformers); "
                            "auto: megatron, torch with --backend fake")
    group.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    group.add_argument("--rollout-tp", type=int, default=1,
                       help="--backend vllm: tensor-parallel size of each engine (above 1 the engine has worker "
                            "processes of its own and takes new weights through a folder)")
    group.add_argument("--engine-memory-fraction", type=float, default=None,
                       help="--backend vllm on GPUs: the share of GPU memory each engine takes (weights + KV "
                            "cache; default: 45%% of what is free when it starts)")

    group.add_argument("--score-matmul-dtype", choices=("float32", "bfloat16"), default="float32",
                       help="--backend hf on CPU: bfloat16 scores with bf16 matmuls (fp32 accumulation), "
                            "~1.6x faster, a token's log-prob off by ~0.03 on average (default: float32)")
    group.add_argument("--fake-corpus", default=None,
                       help="--backend fake: documents whose bigrams make the fake LM (default: --input)")
    group.add_argument("--fake-corpus-docs", type=int, default=2000, help="--backend fake: at most this many")
    group.add_argument("--fake-alpha", type=float, default=0.001, help="--backend fake: add-alpha smoothing")
    group.add_argument("--fake-copy-weight", type=float, default=0.5, help="--backend fake: copy-head weight")


def _fake_corpus(path: str, limit: int) -> tuple[str, ...]:
    import itertools

    from ra3_megatron.data.readers import iter_documents

    return tuple(doc.text for doc in itertools.islice(iter_documents(path, on_error="skip"), limit))


def engine_factory(args: argparse.Namespace):
    """model dir -> rollout engine. The fake engine takes the dir's tokenizer, and its weights
    (fake_lm.json, or a hash of the *.safetensors) as its seed."""
    from pathlib import Path

    from ra3_megatron.rollout.base import create_engine

    if args.backend != "hf" and getattr(args, "score_matmul_dtype", "float32") != "float32":
        raise ConfigError("--score-matmul-dtype applies to --backend hf only")
    if args.backend == "fake":
        corpus = _fake_corpus(args.fake_corpus or args.input, args.fake_corpus_docs)

        def make_fake(model_dir: str):
            d = Path(model_dir)
            tok = str(d) if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file() else None
            engine = create_engine("fake", tokenizer=tok, corpus=corpus, alpha=args.fake_alpha,
                                   copy_weight=args.fake_copy_weight)
            if (d / "fake_lm.json").is_file() or any(d.glob("*.safetensors")):
                engine.load_weights(str(d))
            return engine

        return make_fake
    extra = {"threads": args.threads} if args.threads else {}
    if args.backend == "vllm" and getattr(args, "rollout_tp", 1) > 1:
        extra["tensor_parallel_size"] = args.rollout_tp  # workers of its own: weights by folder
    if args.backend == "vllm" and getattr(args, "engine_memory_fraction", None):
        extra["gpu_memory_utilization"] = args.engine_memory_fraction
    if args.backend == "hf":
        extra["score_matmul_dtype"] = getattr(args, "score_matmul_dtype", "float32")

    def make(model_dir: str):
        return create_engine(args.backend, model=str(model_dir), **extra)

    return make


def trainer_kind(args: argparse.Namespace) -> str:
    return args.trainer if args.trainer != "auto" else ("torch" if args.backend == "fake" else "megatron")


def trainer_factory(args: argparse.Namespace, cfg: EStepConfig, *, job_wide: bool = False, tp: int = 1,
                    pp: int = 1, world: int = 1):
    """model dir -> q's trainer; `job_wide`: a Megatron trainer over all `world` ranks at tp x pp."""
    kind = trainer_kind(args)

    def make(model_dir: str):
        if kind == "torch":
            from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer

            return TorchPolicyTrainer(model_dir, lr=cfg.lr, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                                      micro_batch=cfg.micro_batch, seed=cfg.seed, threads=args.threads)
        from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer

        mbs = min(cfg.micro_batch, 4)
        # An optimizer step of 4 micro-batches' rows, a multiple of what the data-parallel ranks
        # take at once (the same steps, so the same updates, at any DP that divides it).
        dp = data_parallel_size(job_wide=job_wide, world=world, tp=tp, pp=pp)
        rows = rows_per_update(4 * mbs, mbs, dp)
        return MegatronPolicyTrainer.from_hf(model_dir, lr=cfg.lr, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                                             micro_batch=mbs, rows_per_update=rows, seq_length=cfg.max_rl_tokens,
                                             seed=cfg.seed, tp=tp, pp=pp, job_wide=job_wide)

    return make


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint dir of the policy pi")
    parser.add_argument("--input", required=True, help="what `ra3 prepare` reads: .py files / dirs, jsonl, "
                        "parquet, a saved HF dataset, an E-step output dir")
    parser.add_argument("--output", required=True, help="output dir (resumed when it exists)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORLD_SIZE", "1")),
                        help="processes sharing OUTPUT (default: $WORLD_SIZE or 1)")
    parser.add_argument("--worker-rank", type=int, default=int(os.environ.get("RANK", "0")),
                        help="this process's worker index; worker 0 also runs RL (default: $RANK or 0)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N snippets")
    parser.add_argument("--keep-q", action="store_true", help="keep q's weights in OUTPUT/rl/q")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar / RL step lines")
    add_engine_arguments(parser)
    add_rl_job_arguments(parser, what="RL on q")
    add_estep_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.estep.run import EStepRun, run_estep
    from ra3_megatron.rollout.base import check_model_dir

    check_model_dir(args.model)  # before anything is written
    cfg = estep_config_from_args(args)
    if not 0 <= args.worker_rank < args.workers:
        raise ConfigError(f"--worker-rank {args.worker_rank} is not in [0, --workers {args.workers})")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ranks = resolve_rl_ranks(args, trainer=trainer_kind(args), workers=args.workers, rl_on=cfg.rl_steps > 0)
    job_wide = ranks == "all" and args.workers > 1
    run_cfg = EStepRun(model=args.model, input=args.input, output=args.output, rank=args.worker_rank,
                       world=args.workers, limit=args.limit, keep_q=args.keep_q, progress=not args.no_progress,
                       rl_ranks=ranks)
    make_trainer = trainer_factory(args, cfg, job_wide=job_wide, tp=args.tp, pp=args.pp, world=args.workers)
    with job_process_group(job_wide, tp=args.tp, pp=args.pp, seed=cfg.seed):
        stats = run_estep(run_cfg, cfg, make_engine=engine_factory(args),
                          make_trainer=lambda: make_trainer(args.model))
    if stats.get("pending"):
        print(f"worker {args.worker_rank}: done; waiting for the other workers to finish {args.output}")
        return 0
    s = stats["infusion"]["summary"]
    print(f"E-step: {stats['infusion']['records']} snippets -> {args.output}")
    print("  " + ", ".join(f"{k} {s[k]:.4g}" for k in ("think_rate", "mean_thought_tokens", "mean_gain",
                                                       "rollout_share", "reward")))
    secs = stats.get("seconds", {})
    if "infuse" in secs:  # the run that wrote the output (a rerun on a finished one rereads it)
        parts = ", ".join(f"{k} {v:.1f}" for k, v in secs.get("infuse_parts", {}).items())
        rl = f"RL {secs['rl']:.1f} s, " if "rl" in secs else ""
        print(f"  time: {rl}infusion {secs['infuse']:.1f} s" + (f" ({parts})" if parts else ""))
    print(f"  report: {os.path.join(args.output, 'report.md')}")
    return 0
