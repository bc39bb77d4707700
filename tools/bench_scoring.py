"""Benchmark: E-step option scoring, the prefix-cache scorer vs a naive transformers forward vs vLLM.

Scenario `groups` (default) is one E-step scoring call: 16 groups, each one shared prefix of
~200 tokens of real code (CPython stdlib, cut at a line boundary), G+1 = 5 options (no thought,
and 4 one-line comments of ~10 tokens taken from real stdlib comments), and after each the same
40 tokens of the following lines (the horizon). Scenario `walk` is the E-step's lockstep walk:
4 files x 4 consecutive lines, one call per line, each prefix the previous one plus its line.
Methods, float32 unless named bf16, scoring the same groups:

- naive: `score_groups_naive` (the `hf` reference engine's scoring), batched forwards over the full padded sequences,
  logits and log-softmax at all positions, as a plain transformers user would write it;
- naive-onednn: the same with the linear layers on oneDNN instead of MKL (see rollout/cpu_accel/onednn.py);
- prefix-cache: `score_groups_prefix_cache` with a prefix K/V store (the `hf-cpu` engine's scorer);
  prefix-cache-nostore: without the store (equal in `groups`: nothing to reuse);
  prefix-cache-mkl: with torch's default MKL linear layers (separates kernels from algorithm);
  prefix-cache-transformers: through transformers' padded forward instead of the packed decoder
  (`ScorerConfig(packed=False)`, the path of non-Llama-family models; see rollout/cpu_accel/packed_llama.py);
- naive-bf16: the naive forward on a bfloat16 copy of the model (what a user wanting speed would
  load): the baseline at equal precision for
- prefix-cache-bf16: the prefix-cache scorer with bf16 matmuls (fp32 accumulation, everything
  else fp32; `ScorerConfig(matmul_dtype="bfloat16")`, the `hf-cpu` engine's `score_matmul_dtype`);
  prefix-cache-bf16-transformers: the same through transformers' forward;
- vllm: the `vllm` engine's prompt_logprobs scorer (prefix cache read, KV blocks of 32);
- vllm-nocache: vLLM prompt_logprobs as it comes (it then skips reading the prefix cache).

Rounds run every method in turn (timings on a shared machine drift: compare within a run);
options/s uses the median round. Scores are checked against the naive forward.

    python tools/bench_scoring.py                       # SmolLM2-135M, groups, 2 rounds
    python tools/bench_scoring.py --scenario walk --methods naive,prefix-cache-nostore,prefix-cache,vllm
    python tools/bench_scoring.py --model tiny --rounds 1 --methods naive,prefix-cache
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path

COMMENT = re.compile(r"\s*# ?([A-Za-z].{10,80})$")


def model_dir(name: str) -> Path:
    """`tiny`, `tiny-warm`, `smollm2` (embedded, built once and cached) or an HF checkpoint dir."""
    from ra3_megatron.models.warm import resolve_model

    return Path(resolve_model(name))


def load_texts(n: int, rng: random.Random) -> list[list[str]]:
    """Lines of n shuffled stdlib files (tests excluded) with at least 60 lines."""
    from ra3_megatron.models.tiny import stdlib_files

    files, texts = stdlib_files(), []
    rng.shuffle(files)
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, OSError):
            continue
        if len(lines) >= 60:
            texts.append(lines)
        if len(texts) == n:
            break
    return texts


def thought_pool(tok, texts, thought_len: int) -> list[str]:
    """Real one-line comments whose rendered line is about thought_len tokens."""
    found = {m.group(1) for lines in texts for ln in lines if (m := COMMENT.match(ln.rstrip("\n")))}
    return [
        c
        for c in sorted(found)
        if abs(len(tok.encode(f"# {c}\n", add_special_tokens=False)) - thought_len) <= 2
    ]


def options(tok, line: str, target, pool, rng, n_thoughts: int):
    from ra3_megatron.rollout.base import ScoreOption

    indent = line[: len(line) - len(line.lstrip())]
    thoughts = [
        tok.encode(f"{indent}# {c}\n", add_special_tokens=False) for c in rng.sample(pool, n_thoughts)
    ]
    return (ScoreOption(middle=(), target=target),) + tuple(
        ScoreOption(middle=tuple(t), target=target) for t in thoughts
    )


def build_calls(tok, args) -> list[list]:
    """The score_groups calls of a scenario. Lines are tokenized one by one and the ids joined, so
    a prefix grown by a line extends the earlier prefix token for token (as in the E-step).

    groups: one call, `groups` groups from different files (prefix ~prefix_tokens tokens).
    walk: `groups` // `steps` files walked `steps` lines down, one group per file per call; each
    next prefix is the previous one plus its line (the no-thought option chosen), as the E-step
    scores snippets in lockstep.
    """
    from ra3_megatron.rollout.base import ScoreGroup

    rng = random.Random(args.seed)
    steps = args.steps if args.scenario == "walk" else 1
    texts = load_texts(4 * args.groups, rng)
    pool = thought_pool(tok, texts, args.thought_tokens)
    calls: list[list] = [[] for _ in range(steps)]
    for lines in texts:
        if len(calls[0]) == args.groups // steps:
            break
        ids = [tok.encode(ln, add_special_tokens=False) for ln in lines]
        t0 = rng.randrange(len(lines) // 2, len(lines) - steps - 10)
        start, n = t0, 0
        while start > 0 and n < args.prefix_tokens:
            start -= 1
            n += len(ids[start])
        if n < args.prefix_tokens:
            continue
        for k in range(steps):
            t = t0 + k
            target = tuple(x for i in range(t, min(len(ids), t + 40)) for x in ids[i])[: args.horizon]
            prefix = tuple(x for i in range(start, t) for x in ids[i])
            calls[k].append(
                ScoreGroup(prefix=prefix, options=options(tok, lines[t], target, pool, rng, args.thoughts))
            )
    if len(calls[0]) < args.groups // steps:
        raise SystemExit(f"only {len(calls[0])} groups per call could be built from the stdlib")
    return calls


def diffs(scores, ref):
    tok = max(abs(x - y) for g, h in zip(scores, ref) for o, p in zip(g, h) for x, y in zip(o, p))
    tot = max(abs(sum(o) - sum(p)) for g, h in zip(scores, ref) for o, p in zip(g, h))
    same_best = sum(
        max(range(len(g)), key=lambda i, g=g: sum(g[i])) == max(range(len(h)), key=lambda i, h=h: sum(h[i]))
        for g, h in zip(scores, ref)
    )
    return tok, tot, same_best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | an HF checkpoint dir")
    ap.add_argument("--scenario", default="groups", choices=["groups", "walk"])
    ap.add_argument("--groups", type=int, default=16, help="groups in all (walk: files x steps)")
    ap.add_argument("--steps", type=int, default=4, help="walk: consecutive lines per file")
    ap.add_argument("--thoughts", type=int, default=4, help="G: options per group = G + 1")
    ap.add_argument("--prefix-tokens", type=int, default=200)
    ap.add_argument("--thought-tokens", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--methods",
        default="naive,prefix-cache,vllm,vllm-nocache",
        help="of naive, naive-onednn, naive-bf16, prefix-cache, prefix-cache-nostore, prefix-cache-mkl, "
        "prefix-cache-transformers, prefix-cache-bf16, prefix-cache-bf16-transformers, vllm, vllm-nocache",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    methods = args.methods.split(",")

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # vLLM keeps torch's threads when set
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore
    from ra3_megatron.rollout.cpu_accel.onednn import onednn_linears
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import (
        ScorerConfig,
        score_groups_naive,
        score_groups_prefix_cache,
    )

    torch.set_num_threads(args.threads)
    path = model_dir(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    calls = build_calls(tok, args)
    groups = [g for call in calls for g in call]
    n_opts = sum(len(g.options) for g in groups)
    mid = statistics.mean(len(o.middle) for g in groups for o in g.options if o.middle)
    pre = statistics.mean(len(g.prefix) for g in groups)
    print(
        f"model {path.name}, scenario {args.scenario}: {len(calls)} call(s), {len(groups)} groups, {n_opts} "
        f"options; prefix {pre:.0f} tokens, thoughts {mid:.1f}, horizon {args.horizon} (means); "
        f"torch threads {torch.get_num_threads()}"
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vllm: dict = {}
    copies: dict = {}  # naive-bf16's bfloat16 model

    def run(method, some_calls):
        """Score every call in order; state (stores, caches) starts fresh for each run."""
        store = (
            PrefixKVStore(2 << 30)
            if method.startswith("prefix-cache") and method != "prefix-cache-nostore"
            else None
        )
        scfg = ScorerConfig(
            onednn=method != "prefix-cache-mkl",
            matmul_dtype="bfloat16" if method.startswith("prefix-cache-bf16") else "float32",
            packed=not method.endswith("-transformers"),
        )
        if method.startswith("vllm"):
            if not vllm:
                from ra3_megatron.rollout import create_engine

                t0 = time.perf_counter()
                vllm["engine"] = create_engine(
                    "vllm", model=str(path), threads=args.threads, max_model_len=2048, kv_cache_gib=1
                )
                vllm["config"] = vllm["engine"].config
                print(
                    f"vLLM started in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}"
                )
            vllm["engine"].config = replace(vllm["config"], enable_prefix_caching=method == "vllm")
            vllm["engine"].llm.reset_prefix_cache()
        out = []
        for call in some_calls:
            if method == "naive-bf16":
                if "bf16" not in copies:
                    copies["bf16"] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
                out += score_groups_naive(copies["bf16"], call, batch_rows=args.thoughts + 1)
            elif method.startswith("naive"):
                with onednn_linears(model, enabled=method == "naive-onednn"):
                    out += score_groups_naive(model, call, batch_rows=args.thoughts + 1)
            elif method.startswith("prefix-cache"):
                out += score_groups_prefix_cache(model, call, scfg, store=store)
            else:
                out += vllm["engine"].score_groups(call)
        return out

    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    scores = {}
    for m in methods:  # warm-up on two groups: kernel selection, allocator, vLLM start
        run(m, [groups[:2]])
    for r in range(args.rounds):
        for m in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            scores[m] = run(m, calls)
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
            print(
                f"round {r + 1} {m:20s} {times[m][-1]:7.2f} s wall {cpu[m][-1]:7.2f} s cpu  "
                f"load avg {os.getloadavg()[0]:.1f}",
                flush=True,
            )

    # Wall time is what a user waits; on a shared machine other jobs steal cores, so options per
    # CPU-second (all threads of this process) is printed beside it.
    ref = scores.get("naive") or scores[methods[0]]
    base = (
        {"wall": n_opts / statistics.median(times["naive"]), "cpu": n_opts / statistics.median(cpu["naive"])}
        if "naive" in times
        else None
    )
    rows = []
    print(
        f"\n{'method':20s} {'options/s':>10s} {'speedup':>8s} {'opts/cpu-s':>11s} {'speedup':>8s} "
        f"{'max|dlogp| tok':>15s} {'max|dsum|':>10s} {'same best':>10s}"
    )
    for m in methods:
        ops, ops_cpu = n_opts / statistics.median(times[m]), n_opts / statistics.median(cpu[m])
        tok_d, sum_d, same = diffs(scores[m], ref)
        sp = f"{ops / base['wall']:7.2f}x" if base else "-"
        sp_cpu = f"{ops_cpu / base['cpu']:7.2f}x" if base else "-"
        print(
            f"{m:20s} {ops:10.2f} {sp:>8s} {ops_cpu:11.2f} {sp_cpu:>8s} {tok_d:15.2e} {sum_d:10.2e} "
            f"{same:>5d}/{len(groups)}"
        )
        rows.append(
            {
                "method": m,
                "options_per_s": ops,
                "options_per_cpu_s": ops_cpu,
                "seconds": times[m],
                "cpu_seconds": cpu[m],
                "max_token_diff": tok_d,
                "max_sum_diff": sum_d,
                "same_best": same,
            }
        )
    # Live weight reload (the same checkpoint), as after each E-step RL update.
    from ra3_megatron.rollout.hf_engine import load_state_dict_from_dir

    t0 = time.perf_counter()
    load_state_dict_from_dir(model, path)
    line = f"\nweight reload: transformers {time.perf_counter() - t0:.2f} s"
    if vllm:
        vllm["engine"].load_weights(str(path))
        line += f", vLLM {vllm['engine'].reload_seconds[-1]:.2f} s"
        vllm["engine"].close()
    print(line)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=1)
        )


if __name__ == "__main__":  # vLLM may start workers with spawn, which re-imports this file
    main()
