"""RL on q with both trainers on the tiny Llama (transformers, and Megatron-Core: the MegatronEngine
stepped with the policy-gradient loss, one gloo rank on CPU): log-probs agree with the rollout
engine, the step moves the decision and thought tokens the way the advantages say, and the
exported weights reach the rollout engine."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.pieces import Codec, cut_pieces, think_marker, thought_middle
from ra3_megatron.estep.rl import examples_from_groups
from ra3_megatron.estep.search import Option, PositionGroup
from ra3_megatron.rl.batch import build_batch, engine_logprobs

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

    from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer
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

    from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer

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
    from ra3_megatron.megatron.parallel import destroy_distributed
    from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer

    trainer = MegatronPolicyTrainer.from_hf(
        tiny_model_dir, lr=3e-3, micro_batch=2, rows_per_update=4, seq_length=512
    )
    yield trainer
    destroy_distributed()


def test_megatron_rl_step_matches_and_syncs(megatron_trainer, tiny_model_dir, tmp_path):
    import torch

    from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer
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


def _walk_groups(tokenizer):
    """Two positions of one walk: `<act>` chosen at the first, so its `<act>` example begins
    every example of the second and rides in one of their rows."""
    codec = Codec(tokenizer)
    pieces = cut_pieces(CODE)
    groups, prefix = [], codec.encode(pieces[0].text)
    for piece, advantages in zip(pieces[1:3], ((0.3, -0.7), (-0.4, 0.9))):
        act_ids = codec.encode(piece.text)
        d_act = codec.decision_index(act_ids)
        mid = codec.encode(thought_middle("explain the next line", piece))
        options = [
            Option(kind="act", ids=act_ids[: d_act + 1], loss_start=d_act, reward=0.0, advantage=advantages[0]),
            Option(kind="think", ids=(*mid, act_ids[0]), loss_start=codec.decision_index(mid), reward=0.1,
                   text="explain", advantage=advantages[1]),
        ]
        groups.append(PositionGroup(line=piece.line, prefix=prefix, options=options, chosen=0))
        prefix = (*prefix, *act_ids)
    return groups


def _per_event(logp, batch):
    out = {}
    for r in range(batch["tokens"].shape[0]):
        for j in batch["loss_mask"][r].nonzero().flatten().tolist():
            context = (*batch["tokens"][r, : j + 1].tolist(), int(batch["labels"][r, j]))
            out[context] = (float(logp[r, j]), float(batch["advantages"][r, j]))
    return out


def test_folded_rows_give_the_log_probs_of_their_examples(megatron_trainer, tiny_model_dir):
    """The trainer (Megatron-Core) and the rollout engine (old log-probs) read each folded
    example's loss tokens exactly as from its own row."""
    from ra3_megatron.rollout.base import create_engine

    engine = create_engine("hf", model=str(tiny_model_dir))
    groups = _walk_groups(engine.tokenizer)
    plain = build_batch(examples_from_groups(groups, max_tokens=512, fold=False), pad_id=1)
    folded = build_batch(examples_from_groups(groups, max_tokens=512), pad_id=1)
    assert folded["tokens"].shape[0] == plain["tokens"].shape[0] - 1
    for source in (megatron_trainer.logprobs, lambda b: engine_logprobs(engine, b)):
        a, b = _per_event(source(plain), plain), _per_event(source(folded), folded)
        assert a.keys() == b.keys() and len(a) == int(plain["loss_mask"].sum())
        for k in a:
            assert b[k][0] == pytest.approx(a[k][0], abs=2e-4) and b[k][1] == pytest.approx(a[k][1])


def test_tree_rows_train_like_separate_rows_in_megatron(megatron_trainer, tiny_model_dir):
    """One row holding the walk's examples as trunk + branches (explicit mask, RoPE at each
    token's own position) gives the separate rows' log-probs, and the same update."""
    import torch

    from ra3_megatron.rl import tree_rows
    from ra3_megatron.rollout.base import create_engine

    assert megatron_trainer.supports_tree_rows  # local attention on CPU
    engine = create_engine("hf", model=str(tiny_model_dir))
    examples = examples_from_groups(_walk_groups(engine.tokenizer), max_tokens=512)
    rows = tree_rows.plan_trees(examples, 512, min_shared=4)
    assert len(rows) == 1 and len(rows[0].branches) == len(examples) - 1
    tree, where = tree_rows.build_tree_batch(examples, rows, pad_id=1)
    linear = build_batch(examples, pad_id=1)
    src = tree_rows.linear_positions(examples)
    m = tree["loss_mask"] > 0

    lin_old = megatron_trainer.logprobs(linear)
    tree_old = megatron_trainer.logprobs(tree)
    moved = tree_rows.move(lin_old, src, where, tree["loss_mask"].shape)
    assert torch.allclose(tree_old[m], moved[m], atol=2e-4), (tree_old[m] - moved[m]).abs().max()
    engine_old = tree_rows.move(engine_logprobs(engine, linear), src, where, tree["loss_mask"].shape)
    assert torch.allclose(engine_old[m], moved[m], atol=2e-4)

    # The per-token log-probs are the same functions of the weights, so are their gradients; the
    # step itself must train on the tree: tokens with a positive advantage go up.
    tree["old_logprobs"] = moved
    for _ in range(3):
        metrics = megatron_trainer.step(tree)
    assert metrics["tokens"] == int(m.sum()) and metrics["optimizer_steps"] == 1
    delta = megatron_trainer.logprobs(tree) - moved
    up, down = m & (tree["advantages"] > 0), m & (tree["advantages"] < 0)
    assert float(delta[up].mean()) > 0.02 and float(delta[down].mean()) < -0.02


def _step_twice_with_a_restart(make, batch, tmp_path):
    """(losses of 3 steps straight, losses of 1 step + save/export + a fresh trainer + load + 2 steps)."""
    straight = make(None)
    batch = {**batch, "old_logprobs": straight.logprobs(batch)}
    losses = [straight.step(batch)["loss"] for _ in range(3)]
    first = make(None)
    resumed_losses = [first.step(batch)["loss"]]
    first.export_weights(tmp_path / "w")
    first.save_state(tmp_path / "w" / "trainer_state")
    del first
    again = make(tmp_path / "w")
    again.load_state(tmp_path / "w" / "trainer_state")
    resumed_losses += [again.step(batch)["loss"] for _ in range(2)]
    return losses, resumed_losses


def test_torch_trainer_resumes_with_its_adam_moments(tiny_model_dir, tmp_path):
    """A restarted trainer continues exactly as one that never stopped; without the optimizer
    state (fresh moments) its next losses differ."""
    from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer
    from ra3_megatron.rollout.base import create_engine

    tok = create_engine("hf", model=str(tiny_model_dir)).tokenizer
    batch = build_batch(examples_from_groups(_groups(tok), max_tokens=512), pad_id=1)

    def make(weights):
        return TorchPolicyTrainer(weights or tiny_model_dir, lr=3e-3, micro_batch=2, seed=0)

    losses, resumed = _step_twice_with_a_restart(make, batch, tmp_path)
    assert resumed == pytest.approx(losses, abs=1e-6)
    fresh = make(tmp_path / "w")  # the same weights, Adam's moments lost
    assert fresh.step({**batch, "old_logprobs": make(None).logprobs(batch)})["loss"] == pytest.approx(losses[1])
    assert fresh.step({**batch, "old_logprobs": make(None).logprobs(batch)})["loss"] != pytest.approx(losses[2],
                                                                                                     abs=1e-6)


def test_megatron_trainer_resumes_with_its_optimizer_state(tiny_model_dir, tmp_path):
    pytest.importorskip("megatron.core")
    from ra3_megatron.megatron.parallel import destroy_distributed
    from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer
    from ra3_megatron.rollout.base import create_engine

    tok = create_engine("hf", model=str(tiny_model_dir)).tokenizer
    batch = build_batch(examples_from_groups(_groups(tok), max_tokens=512), pad_id=1)

    def make(weights):
        return MegatronPolicyTrainer.from_hf(weights or tiny_model_dir, lr=3e-3, micro_batch=2, rows_per_update=4,
                                             seq_length=512)

    try:
        losses, resumed = _step_twice_with_a_restart(make, batch, tmp_path)
    finally:
        destroy_distributed()
    assert resumed == pytest.approx(losses, abs=1e-5)
    assert (tmp_path / "w" / "trainer_state" / "latest").is_file()


def test_megatron_trainer_close_tears_down_the_group_it_created(tiny_model_dir):
    """An in-process EM round: q's trainer must not leave its process group to the M-step."""
    pytest.importorskip("megatron.core")
    import torch.distributed as dist

    from ra3_megatron.megatron.parallel import destroy_distributed
    from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer

    destroy_distributed()  # whatever an earlier test left
    trainer = MegatronPolicyTrainer.from_hf(tiny_model_dir, lr=1e-3, micro_batch=2, rows_per_update=4, seq_length=64)
    assert dist.is_initialized()
    trainer.close()
    assert not dist.is_initialized() and trainer.engine is None
