"""`ra3 eval`: check code samples on HumanEval / MBPP / a problem file in the sandbox; pass@k.

    ra3 eval --dataset humaneval --samples samples.jsonl --out results.json
    ra3 eval --dataset mbpp --samples s.jsonl --out r.json --k 1,5
    ra3 eval --dataset humaneval --model runs/x/hf --engine vllm --n 10 --temperature 0.8 \\
        --samples samples.jsonl --out results.json      # generates (resuming), then checks

Writes `--out` (pass@k, outcome counts, per-task results), `<out stem>.details.jsonl` (each
sample: passed / failed / timed out, with the reason) and prints a summary table.
"""

from __future__ import annotations

import argparse

from ra3_megatron.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", required=True, help="humaneval, mbpp, mbpp-sanitized, or a problem file (jsonl)"
    )
    p.add_argument("--samples", required=True, help="samples.jsonl (task_id + completion or solution)")
    p.add_argument("--out", required=True, help="results JSON to write")
    p.add_argument("--k", default="1,5,10", help="pass@k values, comma separated (those n allows)")
    p.add_argument(
        "--mbpp-dir", default=None, help="MBPP folder (default: env RA3_MBPP_DIR, else the copy shipped with the package)"
    )
    p.add_argument("--mbpp-prompt", default="3shot", choices=["3shot", "evalplus"], help="MBPP prompt style")
    s = p.add_argument_group("sandbox")
    s.add_argument(
        "--sandbox",
        default="auto",
        choices=["auto", "bwrap", "weak"],
        help="isolation (auto: bwrap if it works)",
    )
    s.add_argument(
        "--timeout", type=float, default=10.0, help="wall seconds per program (load + all its tests)"
    )
    s.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: CPU count)")
    s.add_argument("--memory-mb", type=int, default=2048)
    s.add_argument(
        "--allow-site-packages", action="store_true", help="programs may import installed packages"
    )
    s.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("generation (with --model: write --samples first, resuming)")
    g.add_argument("--model", default=None, help="HF model directory to sample from")
    g.add_argument("--engine", default="vllm", help="rollout engine: vllm, hf (or fake)")
    g.add_argument("--n", type=int, default=1, help="samples per task")
    g.add_argument("--temperature", type=float, default=None, help="default 0 (greedy) for n=1, else 0.8")
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--limit", type=int, default=None, help="only the first N tasks (generation)")


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, not {text!r}") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k values must be >= 1, got {text!r}")
    return ks


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.eval.benchmarks import load_dataset
    from ra3_megatron.eval.checker import check_many
    from ra3_megatron.eval.samples import format_table, read_samples, summarize, write_results
    from ra3_megatron.eval.sandbox import SandboxConfig, SandboxPool

    ks = parse_ks(args.k)
    dataset = load_dataset(args.dataset, mbpp_dir=args.mbpp_dir, mbpp_prompt=args.mbpp_prompt)
    if args.model:
        _generate(args, dataset)
    samples = read_samples(args.samples, dataset)
    config = SandboxConfig(
        mode=args.sandbox,
        timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        site_packages=args.allow_site_packages,
    )
    with SandboxPool(config, size=args.workers) as pool:
        mode = pool.mode
        problems = dataset.problems
        outcomes = check_many(
            [(problems[s.task_id], s.program) for s in samples], pool=pool, progress=not args.no_progress
        )
    results = summarize(dataset, samples, outcomes, ks)
    results["sandbox"] = {"mode": mode, "timeout_s": args.timeout, "workers": pool.size}
    details = write_results(args.out, results, samples, outcomes)
    print(format_table(results))
    print(f"  sandbox {mode}; wrote {args.out} and {details}")
    return 0


def _generate(args: argparse.Namespace, dataset) -> None:
    from ra3_megatron.eval.generate import generate_samples
    from ra3_megatron.rollout.base import create_engine

    if args.n < 1:
        raise ConfigError("--n must be >= 1")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.8)
    task_ids = list(dataset.problems)[: args.limit] if args.limit else None
    engine = create_engine(args.engine, model=args.model)
    try:
        written = generate_samples(
            dataset,
            engine,
            args.samples,
            n=args.n,
            temperature=temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
            task_ids=task_ids,
            progress=not args.no_progress,
        )
    finally:
        engine.close()
    print(f"generated {written} new samples into {args.samples}")
