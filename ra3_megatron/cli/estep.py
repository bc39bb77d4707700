"""`ra3 estep`: one E-step (RL on the latent thoughts, then the infusion pass) over a corpus.

    ra3 estep --model HF_DIR --input src/ --output out/estep [--penalty 0.05] [--samples 4]
              [--horizon 4] [--rl-steps 2] [--backend vllm|hf|hf-cpu|fake] [--share-pi-q] [--trainer megatron|torch]

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
    add_engine_arguments,
    add_rl_job_arguments,
    engine_settings_from_args,
    rl_layout_from_args,
)
from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.config import EStepConfig


def add_estep_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per EStepConfig field (`--rl-steps`, `--position-fraction`, ...)."""
    add_config_arguments(parser.add_argument_group("E-step"), EStepConfig, prefix="estep")


def estep_config_from_args(args: argparse.Namespace) -> EStepConfig:
    return config_from_args(args, EStepConfig, prefix="estep")


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
    add_rl_job_arguments(parser)
    add_estep_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.estep.rl import q_trainer_factory
    from ra3_megatron.estep.run import EStepRun, run_estep
    from ra3_megatron.rl.layout import job_process_group, resolve_rl_ranks
    from ra3_megatron.rollout.base import check_model_dir
    from ra3_megatron.rollout.settings import engine_factory

    check_model_dir(args.model)  # before anything is written
    cfg = estep_config_from_args(args)
    engines, layout = engine_settings_from_args(args), rl_layout_from_args(args)
    if not 0 <= args.worker_rank < args.workers:
        raise ConfigError(f"--worker-rank {args.worker_rank} is not in [0, --workers {args.workers})")
    if engines.threads:
        import torch

        torch.set_num_threads(engines.threads)
    ranks = resolve_rl_ranks(layout, backend=engines.backend, workers=args.workers, rl_on=cfg.rl_steps > 0)
    job_wide = ranks == "all" and args.workers > 1
    run_cfg = EStepRun(model=args.model, input=args.input, output=args.output, rank=args.worker_rank,
                       world=args.workers, limit=args.limit, keep_q=args.keep_q, progress=not args.no_progress,
                       rl_ranks=ranks)
    make_trainer = q_trainer_factory(cfg, layout, engines, job_wide=job_wide, world=args.workers)
    with job_process_group(job_wide, tp=layout.tp, pp=layout.pp, seed=cfg.seed):
        stats = run_estep(run_cfg, cfg, make_engine=engine_factory(engines, corpus=args.input),
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
