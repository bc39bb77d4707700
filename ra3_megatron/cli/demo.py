"""`ra3 demo`: the embedded default, end to end on CPU with no downloads (what `make demo` runs).

    ra3 demo                       # recipe tiny_cpu into runs/demo (resumes if interrupted)
    ra3 demo --fresh               # start over
    ra3 demo em.estep.penalty=0.01 # any recipe field as key=value
    ra3 demo --list                # the recipes; --recipe NAME runs another one

Steps: build the tiny Llama + stdlib tokenizer (cached), two EM rounds on the stdlib `json`
package (E-step search + RL in Megatron, infusion, `ra3 prepare`, M-step in Megatron-Core),
then check the final model's HumanEval samples for a few problems in the sandbox.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny_cpu", help="recipe to run (default: tiny_cpu; --list shows all)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--run-dir", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--fresh", action="store_true", help="delete the run directory first")
    parser.add_argument("--eval-problems", type=int, default=8,
                        help="HumanEval problems to generate and check with the final model (0: skip)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe field overrides")


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.errors import ConfigError
    from ra3_megatron.recipes.run import load_recipe, run_recipe
    from ra3_megatron.rl.layout import torchrun_world

    if args.list:
        from ra3_megatron.recipes import get_recipe, recipe_names

        for name in recipe_names():
            doc = (get_recipe(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:30s} {doc}")
        return 0
    t0 = time.perf_counter()
    first = int(os.environ.get("RANK", "0")) == 0  # under torchrun (a recipe's job) the first rank reports
    if args.fresh:
        if torchrun_world() > 1:
            raise ConfigError("--fresh under torchrun: delete the run directory before the launch instead")
        shutil.rmtree(args.run_dir, ignore_errors=True)
    recipe = load_recipe(args.recipe, [f"em.run_dir={args.run_dir}", *args.overrides])
    if first:
        print(f"ra3 demo: recipe {args.recipe}: {recipe.description}")
        print(f"  model {recipe.em.model}\n  corpus {recipe.em.input}\n  run dir {recipe.em.run_dir}")
    state = run_recipe(recipe, log=print if first else (lambda message: None))
    if not first:
        return 0
    final = state["models"][f"iter_{recipe.em.iterations}"]
    if args.eval_problems > 0:
        _eval(final, Path(args.run_dir) / "eval", args.eval_problems, recipe.engines.backend)
    print(f"\nra3 demo: done in {time.perf_counter() - t0:.0f} s. Reports:")
    print(f"  {args.run_dir}/report.md (EM rounds), {args.run_dir}/iter_*/report.md")
    if args.eval_problems > 0:
        print(f"  {args.run_dir}/eval/results.json (HumanEval, first {args.eval_problems} problems)")
    return 0


def _eval(model_dir: str, out_dir: Path, limit: int, engine: str) -> None:
    from ra3_megatron.cli.main import main

    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["eval", "--dataset", "humaneval", "--model", model_dir, "--engine", engine, "--limit", str(limit),
            "--n", "1", "--max-tokens", "128", "--samples", str(out_dir / "samples.jsonl"), "--out", str(out_dir / "results.json")]
    rc = main(argv)
    if rc:
        raise SystemExit(rc)
