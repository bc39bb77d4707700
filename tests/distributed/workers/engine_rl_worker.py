"""torchrun worker (2 ranks): MegatronEngine with the RL loss under TP=2, PP=2, PP=2 x VPP=2, DP=2.

For each layout, from the same HF weights: forward_logprobs of a batch (compared with
transformers on rank 0), then 3 train steps with policy_gradient_loss (clipped surrogate + k3 KL).
Rank 0 writes OUT/result.json. Usage: torchrun --nproc-per-node 2 engine_rl_worker.py HF_DIR OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROWS, SEQ, MBS = 4, 32, 2
LAYOUTS = {"tp2": dict(tp=2), "pp2": dict(pp=2), "pp2_vpp2": dict(pp=2, vpp=2), "dp2": dict()}


def make_batch(vocab: int) -> dict:
    g = torch.Generator().manual_seed(7)
    x = torch.randint(2, vocab, (ROWS, SEQ + 1), generator=g)
    mask = torch.ones(ROWS, SEQ)
    mask[:, : SEQ // 4] = 0  # the "prompt": not actions
    mask[1, -5:] = 0  # padding after a shorter completion
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5]).unsqueeze(1).expand(ROWS, SEQ).contiguous()
    return {
        "tokens": x[:, :-1],
        "labels": x[:, 1:],
        "position_ids": torch.arange(SEQ).expand(ROWS, SEQ),
        "loss_mask": mask,
        "advantages": adv,
        "noise": 0.3 * torch.randn(ROWS, SEQ, generator=g),
    }


def hf_logprobs(hf_dir: str, batch: dict) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from ra3_megatron.core.losses import token_cross_entropy

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        return -token_cross_entropy(model(batch["tokens"]).logits, batch["labels"])


def run_layout(hf_dir: str, batch: dict, layout: dict) -> dict:
    from megatron.core import parallel_state as ps

    from ra3_megatron.megatron.engine import EngineConfig, MegatronEngine
    from ra3_megatron.megatron.forward_step import policy_gradient_loss_factory
    from ra3_megatron.megatron.optim import OptimConfig
    from ra3_megatron.megatron.parallel import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(**layout))
    cfg = EngineConfig(
        micro_batch_size=MBS,
        global_batch_size=ROWS,
        seq_length=SEQ,
        optim=OptimConfig(lr=1e-3, min_lr=1e-3, lr_decay_style="constant", clip_grad=0.0),
    )
    engine = MegatronEngine.from_hf(hf_dir, cfg)
    dp, r = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    rows = slice(r * ROWS // dp, (r + 1) * ROWS // dp)
    mine = {k: v[rows] for k, v in batch.items()}
    before = engine.forward_logprobs(mine)
    rl = dict(mine, old_logprobs=before + mine["noise"], ref_logprobs=before)
    loss = policy_gradient_loss_factory(clip_eps=0.2, kl_coef=0.1)
    steps = []
    for _ in range(3):
        res = engine.train_step(
            iter([{k: v[i : i + MBS] for k, v in rl.items()} for i in range(0, len(rl["tokens"]), MBS)]), loss
        )
        steps.append(
            {k: res.mean(k) for k in ("pg loss", "kl", "clip frac", "ratio")} | {"tokens": res.num_tokens}
        )
    after = engine.forward_logprobs(mine)
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, (r, before.tolist(), after.tolist()))
    by_dp = {g[0]: g for g in gathered}  # TP/PP ranks hold identical copies
    before_all = torch.tensor(sum((by_dp[i][1] for i in range(dp)), []))
    after_all = torch.tensor(sum((by_dp[i][2] for i in range(dp)), []))
    return {"steps": steps, "before": before_all.tolist(), "after": after_all.tolist()}


def main() -> None:
    hf_dir, out = sys.argv[1], Path(sys.argv[2])
    from transformers import AutoConfig

    batch = make_batch(AutoConfig.from_pretrained(hf_dir).vocab_size)
    result = {name: run_layout(hf_dir, batch, layout) for name, layout in LAYOUTS.items()}
    if torch.distributed.get_rank() == 0:
        result["hf"] = hf_logprobs(hf_dir, batch).tolist()
        result["mask"] = batch["loss_mask"].tolist()
        result["advantages"] = batch["advantages"][:, 0].tolist()
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result))
    from ra3_megatron.megatron.parallel import destroy_distributed

    destroy_distributed()


if __name__ == "__main__":
    main()
