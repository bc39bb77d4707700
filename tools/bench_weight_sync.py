"""Benchmark: seconds per weight sync from an RL trainer into a live rollout engine, in memory vs
through a folder, side by side in one run.

The trainer is the one q's RL and GRPO use (Megatron-Core, one gloo rank on CPU; `--trainer
torch` for the transformers one). Each sync is what an RL step pays after its update:
- memory: the trainer yields HF-named full tensors (Megatron: gathered from its shards) and the
  engine copies them in (`update_weights`; vLLM: the worker's `reload_weights(weights_iterator=)`);
- folder: the trainer writes an HF safetensors dir and the engine reads it (`load_weights`).
After the timed syncs, each engine's log-probs on a probe sequence are compared with the trainer's
own (the weights really arrived). Medians over `--repeats`.

    python tools/bench_weight_sync.py                       # SmolLM2-135M, vLLM and transformers engines
    python tools/bench_weight_sync.py --model tiny --engines hf --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | an HF checkpoint dir")
    ap.add_argument("--engines", default="vllm,hf", help="comma-separated: vllm, hf")
    ap.add_argument("--trainer", choices=("megatron", "torch"), default="megatron")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", default=None, help="where the folder syncs write (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ra3_megatron.models.warm import resolve_model
    from ra3_megatron.rl.batch import RLExample, build_batch, engine_logprobs
    from ra3_megatron.rl.sync import sync_weights
    from ra3_megatron.rollout.base import create_engine

    model = Path(resolve_model(args.model))
    t0 = time.perf_counter()
    if args.trainer == "megatron":
        from ra3_megatron.megatron.parallel import destroy_distributed
        from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer

        trainer = MegatronPolicyTrainer.from_hf(model, micro_batch=1, rows_per_update=1, seq_length=256)
    else:
        from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer

        destroy_distributed = None
        trainer = TorchPolicyTrainer(model)
    print(f"[bench] {args.trainer} trainer on {model.name} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    n_params = sum(t.numel() for _, t in trainer.named_weights())
    batch = build_batch([RLExample(tokens=tuple(range(100, 164)), loss_from=1, advantage=1.0)], pad_id=0)
    mask = batch["loss_mask"] > 0
    reference = trainer.logprobs(batch)[mask]

    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        for name in [e for e in args.engines.split(",") if e]:
            t0 = time.perf_counter()
            kwargs = {"enforce_eager": True, "max_model_len": 512, "kv_cache_gib": 0.5} if name == "vllm" else {}
            engine = create_engine(name, model=str(model), threads=args.threads, **kwargs)
            start_s = time.perf_counter() - t0
            times = {}
            for mode in ("memory", "folder"):
                sync_weights(trainer, [engine], mode=mode, folder=Path(tmp) / "w")  # warm-up, not timed
                seconds = [sync_weights(trainer, [engine], mode=mode, folder=Path(tmp) / "w").seconds
                           for _ in range(args.repeats)]
                times[mode] = statistics.median(seconds)
            diff = float((engine_logprobs(engine, batch)[mask] - reference).abs().max())
            rows.append((name, start_s, times["memory"], times["folder"], diff))
            engine.close()

    print(f"\nweight sync, {args.trainer} trainer -> engine, {model.name} ({n_params / 1e6:.1f}M parameters), "
          f"median of {args.repeats}, {args.threads} threads\n")
    print("| engine | engine start s | in memory s | folder s (export + load) | folder / memory | max abs diff vs trainer |")
    print("|---|---|---|---|---|---|")
    for name, start_s, mem, folder, diff in rows:
        print(f"| {name} | {start_s:.1f} | {mem:.3f} | {folder:.3f} | {folder / mem:.1f}x | {diff:.2e} |")
    trainer.close()
    if destroy_distributed is not None:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
