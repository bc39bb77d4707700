"""Benchmark: the cost of one RA3 EM iteration (E-step + M-step) over one NTP epoch, per penalty c.

The paper's ablation on c at this scale. One NTP epoch = the M-step (`ra3 mstep`, Megatron-Core)
alone on the plain data, as many steps as one pass over its tokens needs. One RA3 iteration =
`ra3 estep` (RL on q, then the infusion pass) on the same snippets + the same M-step on the
infused data for one pass over ITS tokens (code + thoughts). Costs are the time inside the loops
(E-step: RL + infusion, from its stats.json; M-step: the sum of its step times), not process
start-up or model loading; wall-clock times are printed beside them. For each c the table gives
think rate, rollout share, mean thought length, and cost / NTP epoch (the target at c = 0.05 is
at most 2x).

A randomly initialised tiny model never writes a comment, so by default the tiny model is first
pretrained by NTP on a separate stdlib slice (`--pretrain-steps`, cached in the work dir); then
q's "#" probability is that of a model that has seen Python comments.

    python tools/bench_em_cost.py                                  # tiny model, c = 0.01, 0.05, 0.2
    python tools/bench_em_cost.py --model smollm2 --files 4 --pretrain-steps 0
    python tools/bench_em_cost.py --trainer torch --backend hf-cpu --penalties 0.05
    python tools/bench_em_cost.py --model smollm2 --backend vllm --corpus mbpp --pretrain-steps 0 \\
        --penalties 0.05 --threads 2                             # wall clock, engine start included
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Small pure-Python packages of the standard library, disjoint from the pretraining slice.
BENCH_PACKAGES = ("json", "email/mime", "wsgiref", "html", "urllib", "xmlrpc", "dbm", "concurrent/futures")
PRETRAIN_PACKAGES = ("asyncio", "logging", "importlib", "unittest", "multiprocessing", "http", "email")


THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for every subprocess (set from --threads)


def ra3(*args: str) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ra3_megatron.cli.main", *args]
    proc = subprocess.run(cmd, env={**os.environ, **THREADS}, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0


def copy_slice(packages, out: Path, max_files: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for pkg in packages:
        for f in sorted((STDLIB / pkg).glob("*.py")):
            if n >= max_files:
                return out
            dst = out / f"{pkg.replace('/', '_')}__{f.name}"
            if not dst.exists():
                shutil.copyfile(f, dst)
            n += 1
    return out


def mbpp_corpus(out: Path, limit: int | None = None) -> Path:
    """MBPP's train-split reference solutions of 4+ lines (the package's copy), one file each."""
    from ra3_megatron.eval import benchmarks

    path = Path(benchmarks.__file__).parent / "data" / "mbpp" / "mbpp.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    kept = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        code = rec["code"].replace("\r\n", "\n")
        if 601 <= rec["task_id"] <= 974 and code.count("\n") >= 3:  # the train split
            (out / f"task_{rec['task_id']}.py").write_text(code + "\n", encoding="utf-8")
            kept += 1
            if kept == limit:
                break
    return out


def prepare(src: Path, tokenizer: str, prefix: Path, max_tokens: int) -> int:
    if not Path(f"{prefix}.summary.json").is_file():
        ra3("prepare", "--input", str(src), "--tokenizer", tokenizer, "--output", str(prefix),
            "--max-tokens", str(max_tokens), "--no-progress")
    return int(json.loads(Path(f"{prefix}.summary.json").read_text())["tokens_with_eos"])


def mstep(model: str, data: Path, out: Path, steps: int, a, lr: float | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall = ra3("mstep", "--model", model, "--data", str(data), "--out", str(out), "--steps", str(steps),
               "--micro-batch-size", str(a.micro_batch), "--global-batch-size", str(a.global_batch),
               "--seq-length", str(a.seq_length), "--lr", str(lr or a.lr), "--log-interval", "1000")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"seconds": sum(r["step_time_s"] for r in rows), "wall": wall, "steps": steps,
            "loss": rows[-1].get("loss"), "code_ce": rows[-1].get("code_ce")}


def epoch_steps(tokens: int, a) -> int:
    return max(1, math.ceil(tokens / (a.global_batch * a.seq_length)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, tiny-warm, smollm2, or an HF checkpoint dir")
    p.add_argument("--work", default="runs/bench_em_cost", help="work dir (cached corpus, data, pretrained model)")
    p.add_argument("--corpus", default="stdlib", choices=("stdlib", "mbpp"),
                   help="stdlib packages (--files of them) or MBPP's train-split solutions of 4+ lines")
    p.add_argument("--files", type=int, default=24, help="stdlib files in the benchmark corpus")
    p.add_argument("--penalties", default="0.01,0.05,0.2")
    p.add_argument("--backend", default="hf-cpu", choices=("hf-cpu", "hf", "vllm"))
    p.add_argument("--trainer", default="megatron", choices=("megatron", "torch"))
    p.add_argument("--rl-steps", type=int, default=2)
    p.add_argument("--rl-snippets", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--position-fraction", type=float, default=1.0)
    p.add_argument("--lookahead", type=int, default=8, help="rollouts per speculative window (1: one at a time)")
    p.add_argument("--batch-snippets", type=int, default=16, help="snippets searched in lockstep")
    p.add_argument("--score-matmul-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="--backend hf-cpu: E-step scoring matmuls (bfloat16: faster, log-probs off by ~0.03)")
    p.add_argument("--snippet-tokens", type=int, default=512)
    p.add_argument("--pretrain-steps", type=int, default=150, help="NTP steps on another stdlib slice first (tiny)")
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of every process, E-step and M-step alike (1: on a shared, loaded "
                        "machine small ops with 2 threads wait on each other far more than they gain)")
    a = p.parse_args()
    THREADS["OMP_NUM_THREADS"] = str(a.threads)

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    from ra3_megatron.models.warm import resolve_model

    model = resolve_model(a.model)
    if a.pretrain_steps:
        pre = work / f"pretrained_{a.pretrain_steps}"
        if not (pre / "hf" / "config.json").is_file():
            src = copy_slice(PRETRAIN_PACKAGES, work / "pretrain_src", 400)
            data = work / "pretrain_data" / "train"
            prepare(src, model, data, a.seq_length * 4)
            print(f"pretraining {a.model} for {a.pretrain_steps} NTP steps on {src} ...", flush=True)
            mstep(model, data, pre, a.pretrain_steps, a, lr=a.pretrain_lr)
        model = str(pre / "hf")
    if a.corpus == "mbpp":
        src, name = mbpp_corpus(work / "corpus_mbpp"), "mbpp"
    else:
        src, name = copy_slice(BENCH_PACKAGES, work / f"corpus_{a.files}", a.files), str(a.files)
    plain = work / f"plain_{name}" / "train"
    tokens = prepare(src, model, plain, a.snippet_tokens)
    steps = epoch_steps(tokens, a)
    print(f"corpus: {len(list(src.glob('*.py')))} {a.corpus} files, {tokens:,} tokens; NTP epoch = {steps} steps of "
          f"{a.global_batch}x{a.seq_length}", flush=True)
    ntp = [mstep(model, plain, work / "ntp_mstep", steps, a)]
    print(f"NTP epoch: {ntp[0]['seconds']:.1f} s in the loop ({ntp[0]['wall']:.1f} s wall)", flush=True)

    rows = []
    for c in [float(x) for x in a.penalties.split(",")]:
        out = work / f"estep_c{c}"
        shutil.rmtree(out, ignore_errors=True)
        args = ["estep", "--model", model, "--input", str(src), "--output", str(out), "--backend", a.backend,
                "--trainer", a.trainer, "--penalty", str(c), "--samples", str(a.samples), "--horizon",
                str(a.horizon), "--rl-steps", str(a.rl_steps), "--rl-snippets", str(a.rl_snippets),
                "--position-fraction", str(a.position_fraction), "--max-snippet-tokens", str(a.snippet_tokens),
                "--lookahead", str(a.lookahead), "--batch-snippets", str(a.batch_snippets),
                "--no-progress"]
        args += ["--threads", str(a.threads)]
        if a.backend == "hf-cpu":
            args += ["--score-matmul-dtype", a.score_matmul_dtype]
        e_wall = ra3(*args)
        stats = json.loads((out / "stats.json").read_text())
        data = work / f"infused_c{c}" / "train"
        shutil.rmtree(data.parent, ignore_errors=True)
        i_tokens = prepare(out, model, data, a.snippet_tokens)
        m = mstep(model, data, work / f"mstep_c{c}", epoch_steps(i_tokens, a), a)
        secs = stats["seconds"]
        rows.append({"c": c, **stats["infusion"]["summary"], "estep_s": secs.get("rl", 0.0) + secs["infuse"],
                     "rl_s": secs.get("rl", 0.0), "estep_wall": e_wall, "mstep_s": m["seconds"],
                     "mstep_steps": m["steps"], "tokens": i_tokens, "rl_reward": [r.get("reward") for r in stats["rl"]],
                     "rl_phases": {k: round(sum(r.get(k, 0.0) for r in stats["rl"]), 2)
                                   for k in ("search_s", "logprobs_s", "update_s", "sync_s")},
                     "infuse_parts": secs.get("infuse_parts", {}), "mstep_wall": m["wall"]})
        print(json.dumps(rows[-1]), flush=True)
    ntp.append(mstep(model, plain, work / "ntp_mstep", steps, a))  # again: machine load drifts
    ntp_s = sum(n["seconds"] for n in ntp) / len(ntp)
    ntp_wall = sum(n["wall"] for n in ntp) / len(ntp)

    print(f"\nmodel {a.model}; backend {a.backend}; RL trainer {a.trainer}; G={a.samples}, tau={a.horizon}, "
          f"RL steps {a.rl_steps} x {a.rl_snippets} snippets; position_fraction {a.position_fraction}; "
          f"lookahead {a.lookahead}; batch_snippets {a.batch_snippets}; scoring matmuls {a.score_matmul_dtype}")
    runs = ", ".join(f"{n['seconds']:.1f}" for n in ntp)
    print(f"NTP epoch: {steps} steps, {ntp_s:.1f} s (runs: {runs})")
    print("| c | think rate | rollout share | discarded share | thought tokens | mean gain | E-step s (RL) "
          "| M-step s (steps) | iteration / NTP epoch | without the fixed RL cost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (r["estep_s"] + r["mstep_s"]) / ntp_s
        no_rl = (r["estep_s"] - r["rl_s"] + r["mstep_s"]) / ntp_s
        print(f"| {r['c']} | {r['think_rate']:.3f} | {r['rollout_share']:.3f} | {r.get('discarded_share', 0):.3f} "
              f"| {r['mean_thought_tokens']:.1f} "
              f"| {r['mean_gain']:.3f} | {r['estep_s']:.1f} ({r['rl_s']:.1f}) | {r['mstep_s']:.1f} "
              f"({r['mstep_steps']}) | {ratio:.2f}x | {no_rl:.2f}x |")
    print("RL costs rl_steps x rl_snippets searches + updates whatever the corpus size: on a real corpus it vanishes.")
    print(f"\nWall clock, start-up included (processes, engines, model loading): NTP epoch {ntp_wall:.1f} s "
          f"(runs: {', '.join(format(n['wall'], '.1f') for n in ntp)})")
    print("| c | E-step wall s | M-step wall s | iteration / NTP epoch (wall) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['c']} | {r['estep_wall']:.1f} | {r['mstep_wall']:.1f} | "
              f"{(r['estep_wall'] + r['mstep_wall']) / ntp_wall:.2f}x |")
    for r in rows:
        print(f"RL phases at c = {r['c']} (s, all steps): {r['rl_phases']}")
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["infuse_parts"].items())
        print(f"Infusion at c = {r['c']} by engine call (s): {parts}")
    (work / "results.json").write_text(json.dumps({"ntp": ntp, "rows": rows, "args": vars(a)}, indent=1))


if __name__ == "__main__":
    main()
