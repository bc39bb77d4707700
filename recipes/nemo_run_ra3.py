"""Launch an RA3 recipe through NeMo-Run (local, Slurm, or any NeMo-Run executor).

    pip install -e ".[nemo]"
    python recipes/nemo_run_ra3.py --recipe tiny_cpu                       # LocalExecutor, here
    python recipes/nemo_run_ra3.py --recipe llama31_8b_8gpu_h100_fp8 --dryrun \\
        em.model=/ckpt/Llama-3.1-8B em.input=/data/python

The task is a `run.Partial` of `ra3_megatron.recipes.run.run_named_recipe`, so any NeMo-Run
executor (SlurmExecutor, SkypilotExecutor...) can take it in place of the LocalExecutor below. A
recipe that runs as a torchrun job (the GPU recipes: `ranks=8`) is launched with NeMo-Run's
torchrun launcher, one task per rank, and every EM phase runs over those ranks.
For Megatron-Bridge pipelines, the M-step loss also plugs in directly as a forward step:
`ra3_megatron.integrations.megatron_bridge` (see README, "Integrations").
"""

from __future__ import annotations

import argparse
import sys


def executor_for(run, ranks: int):
    """A LocalExecutor running the task once, or as a torchrun job of `ranks` tasks."""
    if ranks > 1:
        return run.LocalExecutor(ntasks_per_node=ranks, launcher="torchrun")
    return run.LocalExecutor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny_cpu")
    parser.add_argument("--name", default="ra3")
    parser.add_argument("--dryrun", action="store_true", help="print the experiment, run nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        import nemo_run as run
    except ImportError:
        print("recipes/nemo_run_ra3.py needs NeMo-Run: pip install -e '.[nemo]'", file=sys.stderr)
        return 2
    from ra3_megatron.recipes.run import load_recipe, run_named_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # fail fast on a bad recipe name or override
    task = run.Partial(run_named_recipe, name=args.recipe, overrides=list(args.overrides))
    with run.Experiment(args.name) as exp:
        exp.add(task, executor=executor_for(run, recipe.ranks), name=args.recipe)
        if args.dryrun:
            exp.dryrun()
        else:
            exp.run(sequential=True, detach=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
