"""`ra3 plan`: memory per GPU for each phase of a recipe, and whether it fits.

    ra3 plan --recipe llama31_8b_8gpu_h100_fp8
    ra3 plan --recipe llama31_8b_8gpu_h100_fp8 --gpus 1
    ra3 plan --recipe qwen25_1p5b_8gpu_h100_bf16 --gpu-memory-gb 40 mstep.tp=2 em.estep.max_rl_tokens=1024

Prints one row per phase (E-step rollouts, q's RL update, M-step, GRPO rollouts and update): GiB
per GPU for weights, gradients, optimizer state, activations, engine weights and KV cache. Exits 1
when a phase does not fit, with the reason and a layout that would. `mstep.KEY=VALUE` overrides
an M-step field of the recipe (`em.mstep.KEY`); any other `KEY=VALUE` a recipe field (as in `ra3 demo`). The model
is counted on the meta device (method: `ra3_megatron.recipes.plan`); nothing touches a GPU.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (`ra3 demo --list`)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs of the job (default: the recipe's ranks, or its M-step nproc)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0,
                        help="memory per GPU in GiB, as GPU makers count it (default: 80, an H100)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="mstep.KEY=VALUE or recipe fields")


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.errors import ConfigError
    from ra3_megatron.recipes.plan import fits, fitting_trainer_layout, format_table, plan_recipe
    from ra3_megatron.recipes.run import load_recipe

    # `mstep.KEY` is short for the recipe field `em.mstep.KEY`
    recipe = load_recipe(args.recipe, [f"em.{o}" if o.startswith("mstep.") else o for o in args.overrides])
    gpus = args.gpus or (recipe.ranks if recipe.ranks > 1 else recipe.em.nproc)
    if gpus < 1 or args.gpu_memory_gb <= 0:
        raise ConfigError("--gpus and --gpu-memory-gb must be positive")
    mstep = recipe.em.mstep
    phases, shape = plan_recipe(recipe, gpus=gpus, gpu_gb=args.gpu_memory_gb)
    print(f"{args.recipe}: {shape.total / 1e9:.2f}B parameters, {gpus} GPU(s) of {args.gpu_memory_gb:g} GiB "
          "(GiB per GPU below)")
    print(format_table(phases, args.gpu_memory_gb))
    failed = [p for p in phases if not fits(p, args.gpu_memory_gb)]
    for p in failed:
        why = p.note or f"needs {p.total:.1f} GiB of {args.gpu_memory_gb:g}"
        print(f"\n{p.name} does not fit: {why}.")
        if p.name == "M-step":
            seq, mbs = mstep.seq_length, mstep.micro_batch_size
            layout = fitting_trainer_layout(shape, gpus=gpus, gpu_gb=args.gpu_memory_gb, seq=seq, micro_batch=mbs)
            if layout:
                print(f"  a layout that fits: mstep.tp={layout.tp} mstep.pp={layout.pp} (DP={layout.dp}, "
                      "distributed optimizer, sequence parallel)")
            else:
                more = next((g for g in (2, 4, 8, 16, 32, 64) if g > gpus and fitting_trainer_layout(
                    shape, gpus=g, gpu_gb=args.gpu_memory_gb, seq=seq, micro_batch=mbs)), None)
                print(f"  no TP x PP layout of {gpus} GPU(s) fits" + (f"; {more} GPUs would" if more else ""))
        else:
            estep = recipe.em.estep
            seq = estep.max_rl_tokens if p.name.startswith("E-step") else 2048
            engines = sum(p.parts.get(k, 0.0) for k in ("engine weights", "engine KV"))
            layout = fitting_trainer_layout(shape, gpus=max(gpus, 1), gpu_gb=args.gpu_memory_gb, seq=seq,
                                            micro_batch=min(estep.micro_batch, 4), engines_gb=engines)
            if layout:
                print(f"  a layout that fits beside the engines: rl.tp={layout.tp} rl.pp={layout.pp} (DP={layout.dp}, "
                      "Adam sharded over DP)" + ("" if recipe.ranks > 1 else
                                                 f" as a torchrun job of {gpus} ranks (ranks={gpus})"))
            else:
                more = next((g for g in (2, 4, 8, 16, 32, 64) if g > gpus and fitting_trainer_layout(
                    shape, gpus=g, gpu_gb=args.gpu_memory_gb, seq=seq, micro_batch=min(estep.micro_batch, 4),
                    engines_gb=engines)), None)
                print(f"  no rl.tp x rl.pp layout of {gpus} GPU(s) fits beside the engines"
                      + (f"; {more} GPUs would" if more else "; use a smaller model or GPUs with more memory"))
    return 1 if failed else 0
