"""RL batches from search groups: loss masks on the decision + thought tokens, per-token advantages."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.rl import build_batch, examples_from_groups
from ra3_megatron.estep.search import Option, PositionGroup

pytestmark = pytest.mark.unit


def _group():
    prefix = (10, 11, 12)
    act = Option(kind="act", ids=(20, 21), loss_start=1, reward=0.0, advantage=-0.3)
    think = Option(
        kind="think", ids=(20, 30, 31, 32, 20), loss_start=1, reward=0.4, gain=0.5, text="t", advantage=0.6
    )
    failed = Option(kind="think", ids=(20, 30, 33), loss_start=1, reward=-0.1, advantage=-0.3)
    return PositionGroup(line=3, prefix=prefix, options=[act, think, failed], chosen=1)


def test_examples_and_masks():
    examples = examples_from_groups([_group()], max_tokens=100)
    assert [e.tokens for e in examples] == [
        (10, 11, 12, 20, 21),
        (10, 11, 12, 20, 30, 31, 32, 20),
        (10, 11, 12, 20, 30, 33),
    ]
    assert [e.loss_from for e in examples] == [4, 4, 4]
    batch = build_batch(examples, pad_id=0, multiple=8)
    assert tuple(batch["tokens"].shape) == (3, 8)
    # labels are the next tokens; the loss covers the labels from token loss_from on
    assert batch["labels"][1, :7].tolist() == [11, 12, 20, 30, 31, 32, 20]
    assert batch["loss_mask"][0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert batch["loss_mask"][1].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    assert batch["advantages"][1, 3:7].tolist() == pytest.approx([0.6] * 4)
    assert batch["advantages"][0].tolist() == pytest.approx([0, 0, 0, -0.3, 0, 0, 0, 0])
    assert float(batch["advantages"][batch["loss_mask"] == 0].abs().sum()) == 0.0


def test_groups_without_signal_are_dropped_and_long_prefixes_cut():
    g = _group()
    for o in g.options:
        o.advantage = 0.0
    assert examples_from_groups([g], max_tokens=100) == []
    long = _group()
    long.prefix = tuple(range(100, 200))
    examples = examples_from_groups([long], max_tokens=20)
    assert all(len(e.tokens) <= 20 for e in examples)
    assert examples[1].tokens[-5:] == (20, 30, 31, 32, 20) and examples[1].loss_from == 16


def test_build_batch_needs_examples():
    with pytest.raises(ValueError):
        build_batch([])


def test_trim_cuts_after_the_last_loss_position():
    from ra3_megatron.estep.rl import trim

    examples = examples_from_groups([_group()], max_tokens=100)
    batch = build_batch(examples, pad_id=0, multiple=4)
    full = build_batch(examples, pad_id=0, multiple=32)
    assert tuple(full["tokens"].shape) == (3, 32)
    cut = trim(full, multiple=4)
    assert tuple(cut["tokens"].shape) == (3, 8)
    for k in ("tokens", "labels", "loss_mask", "advantages"):
        assert cut[k].tolist() == batch[k][:, :8].tolist()


class _RecordingTrainer:
    def __init__(self):
        self.logprob_calls, self.olds = 0, []

    def logprobs(self, batch):
        import torch

        self.logprob_calls += 1
        return torch.full(batch["loss_mask"].shape, -1.0)

    def step(self, batch):
        self.olds.append(batch["old_logprobs"].clone())
        return {"loss": 0.0}

    def export_weights(self, out_dir):
        pass


@pytest.mark.parametrize("exact", [False, True])
def test_old_logprobs_come_from_the_engine_only_when_it_computes_the_trainers(tiny_tokenizer_dir, tmp_path, exact):
    """EStepConfig.old_logprobs="engine": q's engine answers when it declares trainer-exact
    log-probs (the float32 transformers backend); otherwise (the fake here) the trainer does."""
    import torch

    from ra3_megatron.estep.config import EStepConfig
    from ra3_megatron.estep.rl import run_rl
    from ra3_megatron.rollout.fake import FakeEngine

    code = "def f(a, b):\n    x = a + b\n    y = x * 2\n    return y\n"
    sampler = FakeEngine(corpus=[code], tokenizer=str(tiny_tokenizer_dir))
    scorer = FakeEngine(corpus=[code], tokenizer=str(tiny_tokenizer_dir))
    sampler.trainer_exact_logprobs = exact
    sampler.load_weights = lambda d: None
    trainer = _RecordingTrainer()
    cfg = EStepConfig(rl_steps=1, rl_snippets=2, decision="force", penalty=0.0, python=False)
    history = run_rl(iter([("a", code), ("b", code)]), sampler=sampler, scorer=scorer, trainer=trainer,
                     cfg=cfg, work_dir=tmp_path)
    assert history[0]["examples"] > 0 and len(trainer.olds) == 1
    assert trainer.logprob_calls == (0 if exact else 1)
    old = trainer.olds[0]
    assert bool((old < 0).all()) if not exact else bool((old[old != 0] != -1.0).all())
    assert torch.isfinite(old).all()
