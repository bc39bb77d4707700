"""`ra3 rlvr`: GRPO post-training with unit-test rewards (RLVR); rollouts in vLLM, the policy in Megatron.

    ra3 rlvr --model HF_DIR --output runs/grpo [--problems mbpp-train | problems.jsonl | planted]
             [--heldout mbpp-validation | FILE | none] [--backend vllm|hf|fake]
             [--trainer auto|megatron|torch] [--steps 100 --samples 8 --lr 1e-6 --kl-coef 0.01 ...]

Every GRPOConfig field is a flag (`--prompts-per-step 16`, `--advantage rloo`). Writes
OUTPUT/metrics.jsonl, OUTPUT/tensorboard, OUTPUT/report.md with curves.png, and the policy after
the last step in OUTPUT/policy/step_K (an HF checkpoint). Rerun the same command to resume.
The problem file format: `ra3_megatron/rlvr/problems.py`. MBPP is read from --mbpp-dir, else
env RA3_MBPP_DIR, else the copy shipped with the package (CC BY 4.0).

Under torchrun with the Megatron trainer every rank samples and rewards its share of each step's
problems, and one data-parallel trainer at --tp x --pp updates the policy (--rl-ranks all):

    torchrun --nproc-per-node 2 -m ra3_megatron.cli.main rlvr --model M --output runs/grpo ...
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ra3_megatron.cli.config_args import add_config_arguments as _add_config_arguments
from ra3_megatron.cli.config_args import config_from_args as _config_from_args
from ra3_megatron.cli.rl_job import add_rl_job_arguments, rl_layout_from_args
from ra3_megatron.errors import ConfigError
from ra3_megatron.rl.layout import (
    RLLayout,
    job_process_group,
    policy_trainer_factory,
    resolve_rl_ranks,
    torchrun_world,
)
from ra3_megatron.rlvr.config import GRPOConfig


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per GRPOConfig field."""
    _add_config_arguments(parser.add_argument_group("GRPO"), GRPOConfig, prefix="grpo")


def config_from_args(args: argparse.Namespace) -> GRPOConfig:
    return _config_from_args(args, GRPOConfig, prefix="grpo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint dir of the initial policy")
    parser.add_argument("--output", required=True, help="run dir (resumed when it holds a run)")
    parser.add_argument("--problems", default="mbpp-train",
                        help="mbpp-train | mbpp-validation | mbpp-test | planted | a problem jsonl (default: mbpp-train)")
    parser.add_argument("--heldout", default="mbpp-validation",
                        help="held-out problems for greedy pass@1, same choices, or none (default: mbpp-validation)")
    parser.add_argument("--mbpp-dir", default=None, help="MBPP directory (default: env RA3_MBPP_DIR, else the copy shipped with the package)")
    parser.add_argument("--mbpp-prompt", choices=("3shot", "evalplus"), default="3shot")
    parser.add_argument("--limit", type=int, default=None, help="only the first N training problems")
    parser.add_argument("--backend", choices=("vllm", "hf", "hf-cpu", "fake"), default="vllm",
                        help="rollout engine: vllm, hf (the transformers reference), hf-cpu (it with the CPU "
                             "accelerator), fake (default: vllm)")
    parser.add_argument("--sandbox-mode", choices=("auto", "bwrap", "weak"), default="auto")
    parser.add_argument("--sandbox-workers", type=int, default=None, help="parallel sandboxes (default: CPU count)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM on GPUs: no CUDA graphs / torch.compile (always eager on CPU)")
    parser.add_argument("--no-progress", action="store_true")
    add_rl_job_arguments(parser)
    add_config_arguments(parser)


def make_engine(backend: str, model_dir: str, threads: int | None = None, eager: bool = False):
    from ra3_megatron.rollout.base import create_engine

    if backend == "fake":
        return create_engine("fake", tokenizer=str(model_dir))
    if backend in ("hf", "hf-cpu"):
        return create_engine(backend, model=str(model_dir), threads=threads)
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    # the model's own context, not vLLM's default (which a small model's config may not allow)
    context = int(config.get("max_position_embeddings") or 4096)
    return create_engine("vllm", model=str(model_dir), max_model_len=context, threads=threads,
                         enforce_eager=True if eager else None)  # None: eager on CPU, compiled on GPUs


def make_trainer(layout: RLLayout, backend: str, model_dir: str, cfg: GRPOConfig, threads: int | None = None, *,
                 job_wide: bool = False, world: int = 1):
    """The policy's trainer (the E-step's PolicyTrainer implementations), configured for GRPO
    (`job_wide`: a Megatron trainer over all `world` ranks of the torchrun job at layout.tp x pp)."""
    return policy_trainer_factory(layout, backend=backend, lr=cfg.lr, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                                  micro_batch=cfg.micro_batch, rows=cfg.rows_per_update or cfg.prompts_per_step * cfg.samples,
                                  torch_rows_per_update=cfg.rows_per_update or None,
                                  seq_length=-(-cfg.max_seq_tokens // 16) * 16, seed=cfg.seed, threads=threads,
                                  job_wide=job_wide, world=world)(model_dir)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume(out: Path, body: dict) -> None:
    """Refuse to resume a run dir written with another configuration (more --steps may extend a run)."""
    path = out / "config.json"
    body = json.loads(json.dumps(body))
    body["grpo"].pop("steps", None)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != body:
            flat_old, flat_new = _flatten(old), _flatten(body)
            changed = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
            raise ConfigError(f"{out} holds an RLVR run with another configuration ({', '.join(changed)} differ); "
                              "use a new --output or the same options")
    elif int(os.environ.get("RANK", "0")) == 0:  # one writer when the ranks of a job all start here
        from ra3_megatron.files import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.eval.sandbox import SandboxConfig
    from ra3_megatron.rlvr.grpo import resume_point, run_grpo
    from ra3_megatron.rlvr.problems import load_tasks
    from ra3_megatron.rlvr.verify import Verifier

    cfg = config_from_args(args)
    layout = rl_layout_from_args(args)
    kind = layout.trainer_kind(args.backend)
    problems = load_tasks(args.problems, mbpp_dir=args.mbpp_dir, mbpp_prompt=args.mbpp_prompt)[: args.limit]
    heldout = [] if args.heldout == "none" else load_tasks(args.heldout, mbpp_dir=args.mbpp_dir,
                                                          mbpp_prompt=args.mbpp_prompt)
    out = Path(args.output)
    _check_resume(out, {"grpo": cfg.to_dict(), "model": str(args.model), "problems": args.problems,
                        "heldout": args.heldout, "limit": args.limit, "backend": args.backend, "trainer": kind})
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    done, weights = resume_point(out, args.model)
    world = torchrun_world()
    job_wide = resolve_rl_ranks(layout, backend=args.backend, workers=world) == "all" and world > 1
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if done >= cfg.steps:
        if main_rank:
            print(f"rlvr: {out} already finished {done} steps; report: {out / 'report.md'}")
        return 0
    if done and main_rank:
        print(f"rlvr: resuming {out} after step {done} from {weights}")
    with job_process_group(job_wide, tp=layout.tp, pp=layout.pp, seed=cfg.seed):
        from ra3_megatron.rl.job import Job

        trainer = make_trainer(layout, args.backend, weights, cfg, args.threads, job_wide=job_wide, world=world)
        engine = make_engine(args.backend, weights, args.threads, args.enforce_eager)
        reference = make_engine(args.backend, args.model, args.threads, args.enforce_eager) if cfg.kl_coef else None
        with Verifier(SandboxConfig(mode=args.sandbox_mode), workers=args.sandbox_workers) as verifier:
            summary = run_grpo(cfg, problems=problems, heldout=heldout, engine=engine, trainer=trainer,
                               verifier=verifier, run_dir=out, model_dir=args.model, reference=reference,
                               progress=not args.no_progress, job=Job.of_default_group() if job_wide else None)
        for e in {id(e): e for e in (engine, reference) if e is not None}.values():
            e.close()
        trainer.close()
    if not summary:  # not the first rank: it writes no report
        return 0
    held = (f"; held-out pass@1 {summary['heldout_first']:.3f} -> {summary['heldout_last']:.3f}"
            if summary["heldout_pass1"] else "")
    print(f"rlvr: {summary['steps']} steps; mean reward {summary['reward_first']:.3f} (first 5) -> "
          f"{summary['reward_last']:.3f} (last 5){held}")
    print(f"  report: {out / 'report.md'}")
    return 0
