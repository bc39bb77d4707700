"""Benchmark: M-step training throughput and peak memory, ra3_megatron vs a plain transformers loop.

Same model, same token batches (CPython stdlib code tokenized with the model's tokenizer), same
batch (default 4 x 256), fp32, Adam(W) with weight decay 0.01 and grad clipping at 1.0. Each side
runs in its own fresh process (so peak RSS is that side's alone), one after the other, in one
invocation; rounds alternate the order. Prints a side-by-side table (tokens/s = median step).

    python tools/bench_mstep.py                          # tiny model and SmolLM2-135M, TP=1
    python tools/bench_mstep.py --models tiny --steps 20 --rounds 2
    python tools/bench_mstep.py --models tiny --megatron-tp 1,2   # adds a TP=2 row (torchrun)
    python tools/bench_mstep.py --threads 1                       # steadier on a shared machine

With 2 threads on 2 cores, any other load makes OpenMP steps erratic (seconds instead of tenths)
for both sides alike; --rounds > 1 alternates the sides and pools their steps.

The ra3_megatron side is MegatronEngine.train_step with the latent-aware loss: Megatron DDP,
Megatron's Adam, OptimizerParamScheduler, get_forward_backward_func; the same step `ra3 mstep` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def model_dir(name: str) -> Path:
    """`tiny`, `tiny-warm`, `smollm2` (embedded, built once and cached) or an HF checkpoint dir."""
    from ra3_megatron.models.warm import resolve_model

    return Path(resolve_model(name))


def make_batches(hf_dir: Path, n: int, batch: int, seq: int, out: Path) -> None:
    """n batches of [batch, seq + 1] token ids from stdlib code (tokens = [:, :-1], labels = [:, 1:])."""
    import torch
    from transformers import AutoTokenizer

    from ra3_megatron.models.tiny import stdlib_files

    tok = AutoTokenizer.from_pretrained(hf_dir)
    need = n * batch * (seq + 1)
    ids: list[int] = []
    for path in stdlib_files():
        try:
            ids += tok(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        except (UnicodeDecodeError, OSError):
            continue
        if len(ids) >= need:
            break
    torch.save(torch.tensor(ids[:need]).view(n, batch, seq + 1), out)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    data = torch.load(args.data)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    times = []
    for x in data:
        t0 = time.perf_counter()
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"times": times, "loss": float(loss), "rss_mib": _peak_rss_mib()}


def worker_mcore(args) -> dict:
    import torch

    from ra3_megatron.megatron.engine import EngineConfig, MegatronEngine
    from ra3_megatron.megatron.forward_step import latent_ce_loss
    from ra3_megatron.megatron.optim import OptimConfig
    from ra3_megatron.megatron.parallel import ParallelConfig, destroy_distributed, init_distributed

    data = torch.load(args.data)
    init_distributed(ParallelConfig(tp=args.tp))
    b, s1 = data.shape[1], data.shape[2]
    cfg = EngineConfig(
        micro_batch_size=b, global_batch_size=b, seq_length=s1 - 1, bf16=False,
        optim=OptimConfig(lr=1e-4, min_lr=1e-4, lr_decay_style="constant", adam_beta2=0.95, weight_decay=0.01,
                          clip_grad=1.0, decay_steps=len(data)),
    )
    engine = MegatronEngine.from_hf(args.model, cfg)
    loss = latent_ce_loss(1.0)
    pos = torch.arange(s1 - 1).expand(b, s1 - 1)
    times = []
    for x in data:
        batch = {"tokens": x[:, :-1], "labels": x[:, 1:], "loss_mask": torch.ones(b, s1 - 1), "position_ids": pos}
        t0 = time.perf_counter()
        result = engine.train_step(iter([batch]), loss)
        times.append(time.perf_counter() - t0)
    destroy_distributed()
    return {"times": times, "loss": result.mean("lm loss"), "rss_mib": _peak_rss_mib()}


def run_side(side: str, model: Path, data: Path, tp: int, threads: int) -> dict:
    """One side in fresh process(es); per-rank results are merged (RSS summed over ranks)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads if tp == 1 else 1))
        script = [str(Path(__file__).resolve()), "--worker", side, "--model", str(model), "--data", str(data),
                  "--tp", str(tp), "--result-dir", tmp]
        if tp > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(tp), *script]
        else:
            cmd = [sys.executable, *script]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        results = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    return {"times": results[0]["times"], "loss": results[0]["loss"], "rss_mib": sum(r["rss_mib"] for r in results)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2", help="comma list: tiny, smollm2 or HF dirs")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: 20 tiny, 3 otherwise)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="alternate hf / megatron this many times")
    p.add_argument("--megatron-tp", default="1", help="comma list of TP sizes for the megatron side")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (TP=1)")
    p.add_argument("--json", default=None, help="also write the results here")
    # worker mode (internal)
    p.add_argument("--worker", choices=["hf", "mcore"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        result = worker_hf(args) if args.worker == "hf" else worker_mcore(args)
        rank = int(os.environ.get("RANK", "0"))
        Path(args.result_dir, f"rank{rank:03d}.json").write_text(json.dumps(result))
        return 0

    rows = []
    tps = [int(t) for t in args.megatron_tp.split(",")]
    for name in args.models.split(","):
        hf_dir = model_dir(name)
        steps = args.steps or (20 if name == "tiny" else 3)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "batches.pt"
            make_batches(hf_dir, args.warmup + steps, args.batch, args.seq, data)
            sides = [("transformers", "hf", 1)] + [(f"ra3_megatron TP={tp}", "mcore", tp) for tp in tps]
            runs: dict[str, list[dict]] = {label: [] for label, _, _ in sides}
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                for label, side, tp in order:
                    print(f"[{name}] round {r + 1}: {label} ...", flush=True)
                    runs[label].append(run_side(side, hf_dir, data, tp, args.threads))
        base = None
        for label, _, _tp in sides:
            measured = [t for run in runs[label] for t in run["times"][args.warmup:]]
            tok_s = args.batch * args.seq / statistics.median(measured)
            rss = max(run["rss_mib"] for run in runs[label])
            base = tok_s if base is None else base
            rows.append({"model": name, "side": label, "tokens_per_s": tok_s, "vs_transformers": tok_s / base,
                         "peak_rss_mib": rss, "final_loss": runs[label][-1]["loss"], "steps": len(measured)})
    print(f"\nM-step training, batch {args.batch}x{args.seq}, fp32, Adam(W), {args.threads} threads (TP=1)\n")
    print(f"| {'model':<8} | {'trainer':<20} | {'tokens/s':>9} | {'vs HF':>6} | {'peak RSS MiB':>12} | {'last loss':>9} |")
    print(f"|{'-' * 10}|{'-' * 22}|{'-' * 11}|{'-' * 8}|{'-' * 14}|{'-' * 11}|")
    for r in rows:
        print(f"| {r['model']:<8} | {r['side']:<20} | {r['tokens_per_s']:>9,.0f} | {r['vs_transformers']:>5.2f}x |"
              f" {r['peak_rss_mib']:>12,.0f} | {r['final_loss']:>9.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
