"""`ra3 compare`: RA3 against NTP and two controls, trained on equal code tokens, read on held-out code.

    ra3 compare --model HF_DIR --input train_src/ --heldout heldout_src/ --out runs/compare \\
        [--arms ntp,ra3,shuffled,null] [--penalties 0.01,0.2] [--think-samples 2] \\
        [--pass1 humaneval,mbpp --pass1-limit 50] [E-step flags: --penalty 0.05 --rl-steps 2 ...] \\
        [--mstep.steps 200 --mstep.global-batch-size 16 ...] [--backend vllm|hf|fake]

Writes OUT/results.json (arms.{ntp,ra3,shuffled,null}: code_tokens, heldout_ce, heldout_ce_thinking;
diffs["ra3-ntp"]: mean, ci95, ...), OUT/report.md with PNG plots, TensorBoard scalars in OUT/tb.
Rerun the same command to resume. Layout and method: `ra3_megatron.compare` and docs/RESULTS.md.
"""

from __future__ import annotations

import argparse

from ra3_megatron.cli.em import add_em_phase_arguments, phase_configs_from_args
from ra3_megatron.cli.estep import add_estep_config_arguments, estep_config_from_args
from ra3_megatron.cli.rl_job import (
    add_engine_arguments,
    add_rl_job_arguments,
    engine_settings_from_args,
    rl_layout_from_args,
)
from ra3_megatron.errors import ConfigError


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in _csv(text))
    except ValueError:
        raise ConfigError(f"--penalties must be comma-separated numbers, not {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ra3_megatron.compare.config import BASE_ARMS, PASS1_DATASETS

    parser.add_argument("--model", required=True, help="HF checkpoint dir of the base model (every arm starts there)")
    parser.add_argument("--input", required=True, help="training corpus (anything `ra3 prepare` reads)")
    parser.add_argument("--heldout", required=True, help="held-out corpus: other files than --input")
    parser.add_argument("--out", required=True, help="output dir (resumed when it exists)")
    parser.add_argument("--arms", default=",".join(BASE_ARMS), help="comma-separated subset of " + ",".join(BASE_ARMS))
    parser.add_argument("--penalties", default="", help="extra RA3 arms at these penalties c (the c ablation)")
    # The RA3 arm's EM loop; the --mstep.* and --prepare.* flags apply to every arm (--mstep.steps: the RA3 arm's).
    add_em_phase_arguments(parser, iterations=1)
    parser.add_argument("--null-text", default="Handle the remaining cases.", help="the null arm's sentence")
    parser.add_argument("--think-samples", type=int, default=2, help="self-thinking readings per held-out snippet")
    parser.add_argument("--heldout-limit", type=int, default=None, help="only the first N held-out snippets")
    parser.add_argument("--train-ce-snippets", type=int, default=200, help="training snippets read for (c)")
    parser.add_argument("--pass1", default=",".join(PASS1_DATASETS), help="benchmarks for greedy pass@1, or none")
    parser.add_argument("--pass1-limit", type=int, default=None, help="only the first N tasks of each")
    parser.add_argument("--pass1-max-tokens", type=int, default=384)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per interval")
    parser.add_argument("--no-progress", action="store_true")
    add_engine_arguments(parser)
    add_rl_job_arguments(parser)
    add_estep_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.compare.config import CompareConfig
    from ra3_megatron.compare.run import run_compare
    from ra3_megatron.estep.rl import q_trainer_factory
    from ra3_megatron.rl.layout import resolve_rl_ranks
    from ra3_megatron.rollout.base import check_model_dir
    from ra3_megatron.rollout.settings import engine_factory

    check_model_dir(args.model)
    estep = estep_config_from_args(args)
    engines, layout = engine_settings_from_args(args), rl_layout_from_args(args)
    resolve_rl_ranks(layout, backend=engines.backend, workers=1)  # one process: --tp/--pp are refused
    cfg = CompareConfig(model=args.model, input=args.input, heldout=args.heldout, out=args.out,
                        arms=_csv(args.arms), penalties=_floats(args.penalties), estep=estep,
                        **phase_configs_from_args(args, progress=not args.no_progress),
                        null_text=args.null_text, think_samples=args.think_samples, heldout_limit=args.heldout_limit,
                        train_ce_snippets=args.train_ce_snippets, pass1=_csv(args.pass1),
                        pass1_limit=args.pass1_limit, pass1_max_tokens=args.pass1_max_tokens,
                        bootstrap=args.bootstrap, seed=estep.seed)
    if engines.threads:
        import torch

        torch.set_num_threads(engines.threads)
    results = run_compare(cfg, make_engine=engine_factory(engines, corpus=args.input),
                          make_trainer=q_trainer_factory(estep, layout, engines),
                          progress=not args.no_progress)
    for arm, r in results["arms"].items():
        think = r.get("heldout_ce_thinking")
        print(f"  {arm:>10}: held-out CE {r['heldout_ce']['mean']:.4f}"
              + (f", thinking {think['mean']:.4f} (think rate {r['think_rate']:.3f})" if think else ""))
    print(results["verdict"])
    print(f"  report: {args.out}/report.md")
    return 0
