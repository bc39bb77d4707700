"""GRPO plumbing without a model: advantages -> rows -> the [B, s] batch, step problem order, run log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ra3_megatron.core.rewards import group_advantages
from ra3_megatron.errors import ConfigError
from ra3_megatron.rlvr.batch import batch_from_rows, logprob_gap, rollout_stats, rows_from_rollouts
from ra3_megatron.rlvr.config import GRPOConfig
from ra3_megatron.rlvr.grpo import problems_for_step
from ra3_megatron.rlvr.runlog import RunLog, read_records, summarize
from ra3_megatron.rollout.base import Completion

pytestmark = pytest.mark.unit


def _c(ids, lps=None, reason="stop"):
    return Completion(
        text="", token_ids=tuple(ids), logprobs=None if lps is None else tuple(lps), finish_reason=reason
    )


def test_grpo_and_rloo_advantages_of_a_group():
    r = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    grpo = group_advantages(r, "grpo")
    assert grpo[0, 0] == pytest.approx(0.75 / np.sqrt(0.1875), rel=1e-5)  # (1 - 0.25) / std
    assert grpo[0, 1:] == pytest.approx([-0.25 / np.sqrt(0.1875)] * 3, rel=1e-5)
    assert np.all(grpo[1] == 0.0)
    rloo = group_advantages(r, "rloo")
    assert rloo[0].tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])


def test_rows_mask_the_completion_and_carry_its_advantage():
    prompts = [[5, 6, 7], [8, 9]]
    comps = [[_c([10, 11], [-0.5, -1.5]), _c([12], [-2.0])], [_c([13]), _c([14])]]
    adv = np.array([[1.0, -1.0], [0.0, 0.0]])
    rows = rows_from_rollouts(prompts, comps, adv, max_seq_tokens=64)
    assert [(r.problem, r.sample) for r in rows] == [(0, 0), (0, 1)]  # the all-zero group is dropped
    kept = rows_from_rollouts(prompts, comps, adv, max_seq_tokens=64, drop_zero_advantage=False)
    assert len(kept) == 4 and kept[-1].logprobs is None
    batch = batch_from_rows(rows, pad_id=0)
    assert batch["tokens"].shape == (2, 16)
    assert batch["tokens"][0, :4].tolist() == [5, 6, 7, 10] and batch["labels"][0, :4].tolist() == [
        6,
        7,
        10,
        11,
    ]
    # loss on the labels that are completion tokens: positions 2 and 3 of row 0, position 2 of row 1
    assert batch["loss_mask"][0].nonzero().flatten().tolist() == [2, 3]
    assert batch["loss_mask"][1].nonzero().flatten().tolist() == [2]
    assert batch["advantages"][0, 2:4].tolist() == [1.0, 1.0] and batch["advantages"][1, 2].item() == -1.0
    assert float(batch["advantages"][batch["loss_mask"] == 0].abs().sum()) == 0.0
    assert (
        batch["rollout_logprobs"][0, 2:4].tolist() == [-0.5, -1.5] and batch["rollout_logprobs"][1, 2] == -2.0
    )
    # no rollout log-probs on some row: no rollout_logprobs tensor at all
    assert "rollout_logprobs" not in batch_from_rows(kept, pad_id=0)


def test_long_rows_lose_the_start_of_the_prompt():
    rows = rows_from_rollouts(
        [list(range(1, 11))], [[_c([20, 21, 22]), _c([23])]], np.array([[1.0, -1.0]]), max_seq_tokens=6
    )
    assert rows[0].example.tokens == (8, 9, 10, 20, 21, 22) and rows[0].example.loss_from == 3
    assert rows[1].example.tokens == (6, 7, 8, 9, 10, 23)
    tiny = rows_from_rollouts(
        [[1, 2]], [[_c(range(30, 40)), _c([3])]], np.array([[1.0, -1.0]]), max_seq_tokens=5
    )
    assert tiny[0].example.tokens == (2, 30, 31, 32, 33) and tiny[0].example.loss_from == 1


def test_rollout_stats_and_logprob_gap():
    comps = [[_c([1, 2]), _c([1], reason="length")], [_c([1, 2, 3]), _c([4])]]
    s = rollout_stats(np.array([[1.0, 0.0], [0.0, 0.0]]), comps)
    assert s == pytest.approx(
        {
            "reward_mean": 0.25,
            "reward_std": np.std([1, 0, 0, 0]),
            "pass_rate": 0.5,
            "signal_groups": 0.5,
            "response_tokens": 7 / 4,
            "truncated": 0.25,
        }
    )
    rows = rows_from_rollouts(
        [[5, 6]], [[_c([7, 8], [-1.0, -2.0]), _c([9], [-3.0])]], np.array([[1.0, -1.0]]), max_seq_tokens=16
    )
    batch = batch_from_rows(rows)
    trainer_lp = batch["rollout_logprobs"].clone()
    trainer_lp[0, 1] += 0.3  # on the mask
    trainer_lp[0, 5] += 9.0  # off the mask: ignored
    assert logprob_gap(batch, trainer_lp) == pytest.approx(0.1)


def test_problems_for_step_covers_each_epoch_once_and_is_deterministic():
    order = [i for step in range(6) for i in problems_for_step(10, 5, step, seed=3)]
    for epoch in range(3):
        assert sorted(order[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert order[:10] != order[10:20]  # a new permutation per epoch
    assert problems_for_step(10, 5, 4, seed=3) == order[20:25]
    assert problems_for_step(3, 5, 0, seed=0)[:3] != [] and len(problems_for_step(3, 5, 0, seed=0)) == 5
    with pytest.raises(ConfigError):
        problems_for_step(0, 1, 0, seed=0)


@pytest.mark.parametrize(
    "bad",
    [
        dict(samples=1),
        dict(max_tokens=0),
        dict(advantage="ppo"),
        dict(old_logprobs="ref"),
        dict(top_p=0.0),
        dict(temperature=0.0),
        dict(kl_coef=-1.0),
        dict(max_tokens=64, max_seq_tokens=64),
        dict(eval_every=-1),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        GRPOConfig(**bad)


def test_runlog_resume_drops_records_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path, resume_step=-1, total_steps=4, progress=False)
    log.log({"step": 0, "heldout_pass1": 0.0})
    for k in (1, 2, 3):
        log.log({"step": k, "reward_mean": 0.1 * k, "pass_rate": 0.5})
    log.close()
    log = RunLog(tmp_path, resume_step=2, total_steps=4, progress=False)  # step 3 was not checkpointed
    log.log({"step": 3, "reward_mean": 0.9, "pass_rate": 1.0, "heldout_pass1": 1.0})
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    summary = summarize(read_records(tmp_path / "metrics.jsonl"), window=2)
    assert summary["reward_first"] == pytest.approx(0.15) and summary["reward_last"] == pytest.approx(0.55)
    assert summary["heldout_pass1"] == [(0, 0.0), (3, 1.0)]

    class Cfg:
        def to_dict(self):
            return {"steps": 4}

    log.write_report(Cfg())
    log.close()
    report = (tmp_path / "report.md").read_text()
    assert "| 3 | 1.000 |" in report and json.loads((tmp_path / "summary.json").read_text())["steps"] == 3
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "curves.png" in report
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
