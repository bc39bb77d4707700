"""RL on q with both trainers on the tiny Llama (transformers, and Megatron-Core: the MegatronEngine
stepped with the policy-gradient loss, one gloo rank on CPU): log-probs agree with the rollout
engine, the step moves the decision and thought tokens the way the advantages say, and the
exported weights reach the rollout engine."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.pieces import Codec, cut_pieces, think_marker, thought_middle
from ra3_megatron.estep.rl import build_batch, engine_logprobs, examples_from_groups
from ra3_megatron.estep.search import Option, PositionGroup

pytestmark = pytest.mark.integration

CODE = "def area(r):\n    pi = 3.14159\n    return pi * r * r\n"


def _groups(tokenizer):
    codec = Codec(tokenizer)
    pieces = cut_pieces(CODE)
    prefix = codec.encode(pieces[0].text)
    piece = pieces[1]
    act_ids = codec.encode(piece.text)
    d_act = codec.decision_index(act_ids)
    good = codec.encode(thought_middle("constant for circles", piece))
    bad = codec.encode(thought_middle("zzz qqq", piece))
    d = codec.decision_index(codec.encode(think_marker(piece)))
    options = [
        Option(kind="act", ids=act_ids[: d_act + 1], loss_start=d_act, reward=0.0, advantage=-0.2),
        Option(
            kind="think", ids=(*good, act_ids[0]), loss_start=d, reward=0.5, text="constant", advantage=1.0
        ),
        Option(kind="think", ids=(*bad, act_ids[0]), loss_start=d, reward=-0.1, text="zzz", advantage=-0.8),
    ]
    return [PositionGroup(line=piece.line, prefix=prefix, options=options, chosen=1)]


def _masked_mean(logp, batch, row):
    m = batch["loss_mask"][row] > 0
    return float(logp[row][m].mean())


def test_torch_trainer_moves_tokens_by_advantage_and_syncs_weights(tiny_model_dir, tmp_path):
    import torch

    from ra3_megatron.estep.torch_trainer import TorchPolicyTrainer
    from ra3_megatron.rollout.base import create_engine

    torch.manual_seed(0)
    engine = create_engine("hf", model=str(tiny_model_dir), threads=1)
    trainer = TorchPolicyTrainer(tiny_model_dir, lr=3e-3, micro_batch=2, threads=1)
    batch = build_batch(examples_from_groups(_groups(engine.tokenizer), max_tokens=512), pad_id=1)
    old = trainer.logprobs(batch)
    ref = engine_logprobs(engine, batch)
    mask = batch["loss_mask"] > 0
    assert torch.allclose(old[mask], ref[mask], atol=1e-4), "trainer and rollout engine disagree on log-probs"

    batch["old_logprobs"] = old
    for _ in range(3):
        metrics = trainer.step(batch)
    assert metrics["tokens"] == int(mask.sum()) and metrics["optimizer_steps"] == 1
    new = trainer.logprobs(batch)
    assert _masked_mean(new, batch, 1) > _masked_mean(old, batch, 1) + 0.05  # advantage +1.0: up
    assert _masked_mean(new, batch, 2) < _masked_mean(old, batch, 2) - 0.05  # advantage -0.8: down

    trainer.export_weights(tmp_path / "q")
    engine.load_weights(str(tmp_path / "q"))
    synced = engine_logprobs(engine, batch)
    assert torch.allclose(synced[mask], new[mask], atol=1e-4)


def test_kl_term_is_reported_and_pulls_back(tiny_model_dir):
    import torch
    from transformers import AutoTokenizer

    from ra3_megatron.estep.torch_trainer import TorchPolicyTrainer

    trainer = TorchPolicyTrainer(tiny_model_dir, lr=3e-3, kl_coef=0.5, threads=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = build_batch(examples_from_groups(_groups(tok), max_tokens=512), pad_id=1)
    batch["old_logprobs"] = trainer.logprobs(batch)
    batch["ref_logprobs"] = batch["old_logprobs"].clone()
    first = trainer.step(batch)
    second = trainer.step(batch)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert second["kl"] > 0 and torch.isfinite(torch.tensor(second["loss"]))


@pytest.fixture
def megatron_trainer(tiny_model_dir):
    pytest.importorskip("megatron.core")
    from ra3_megatron.estep.megatron_trainer import MegatronPolicyTrainer
    from ra3_megatron.megatron.parallel import destroy_distributed

    trainer = MegatronPolicyTrainer.from_hf(
        tiny_model_dir, lr=3e-3, micro_batch=2, rows_per_update=4, seq_length=512
    )
    yield trainer
    destroy_distributed()


def test_megatron_rl_step_matches_and_syncs(megatron_trainer, tiny_model_dir, tmp_path):
    import torch

    from ra3_megatron.estep.torch_trainer import TorchPolicyTrainer
    from ra3_megatron.rollout.base import create_engine

    engine = create_engine("hf", model=str(tiny_model_dir))
    batch = build_batch(examples_from_groups(_groups(engine.tokenizer), max_tokens=512), pad_id=1)
    mask = batch["loss_mask"] > 0
    old = megatron_trainer.logprobs(batch)
    reference = TorchPolicyTrainer(tiny_model_dir).logprobs(batch)
    assert torch.allclose(old[mask], reference[mask], atol=2e-4), (old[mask] - reference[mask]).abs().max()

    batch["old_logprobs"] = old
    for _ in range(3):
        metrics = megatron_trainer.step(batch)
    assert metrics["tokens"] == int(mask.sum())  # the padding row adds no tokens
    assert metrics["optimizer_steps"] == 1
    new = megatron_trainer.logprobs(batch)
    assert _masked_mean(new, batch, 1) > _masked_mean(old, batch, 1) + 0.05
    assert _masked_mean(new, batch, 2) < _masked_mean(old, batch, 2) - 0.05

    megatron_trainer.export_weights(tmp_path / "q")
    engine.load_weights(str(tmp_path / "q"))
    synced = engine_logprobs(engine, batch)
    assert torch.allclose(synced[mask], new[mask], atol=2e-4)
