"""RL batches from search groups: loss masks on the decision + thought tokens, per-token advantages."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.rl import examples_from_groups
from ra3_megatron.estep.search import Option, PositionGroup
from ra3_megatron.rl.batch import build_batch

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
    from ra3_megatron.rl.batch import trim

    examples = examples_from_groups([_group()], max_tokens=100)
    batch = build_batch(examples, pad_id=0, multiple=4)
    full = build_batch(examples, pad_id=0, multiple=32)
    assert tuple(full["tokens"].shape) == (3, 32)
    cut = trim(full, multiple=4)
    assert tuple(cut["tokens"].shape) == (3, 8)
    for k in ("tokens", "labels", "loss_mask", "advantages"):
        assert cut[k].tolist() == batch[k][:, :8].tolist()


class _RecordingTrainer:
    dp, dp_rank, rows_per_update = 1, 0, None

    def __init__(self, engines=()):
        self.logprob_calls, self.olds = 0, []
        self.engines, self.awake_during_step = engines, []

    def logprobs(self, batch):
        import torch

        self.logprob_calls += 1
        return torch.full(batch["loss_mask"].shape, -1.0)

    def step(self, batch):
        self.olds.append(batch["old_logprobs"].clone())
        self.awake_during_step.append([not e.asleep for e in self.engines])
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
    from ra3_megatron.rollout.base import EngineCapabilities
    from ra3_megatron.rollout.fake import FakeEngine

    code = "def f(a, b):\n    x = a + b\n    y = x * 2\n    return y\n"
    sampler = FakeEngine(corpus=[code], tokenizer=str(tiny_tokenizer_dir))
    scorer = FakeEngine(corpus=[code], tokenizer=str(tiny_tokenizer_dir))
    sampler.capabilities = EngineCapabilities(trainer_exact_logprobs=exact)
    sampler.load_weights = lambda d: None
    trainer = _RecordingTrainer()
    cfg = EStepConfig(rl_steps=1, rl_snippets=2, decision="force", penalty=0.05, python=False)
    history = run_rl(iter([("a", code), ("b", code)]), sampler=sampler, scorer=scorer, trainer=trainer,
                     cfg=cfg, work_dir=tmp_path)
    assert history[0]["examples"] > 0 and len(trainer.olds) == 1
    assert history[0]["row_layout"] == "fold" and history[0]["rows"] <= history[0]["examples"]
    assert trainer.logprob_calls == (0 if exact else 1)
    old = trainer.olds[0]
    assert bool((old < 0).all()) if not exact else bool((old[old != 0] != -1.0).all())
    assert torch.isfinite(old).all()


def _walk(seed: int, positions: int = 4):
    """Groups of one snippet's left-to-right walk: each prefix is the last one + the chosen
    option + the rest of its line, as the E-step builds them."""
    import random

    rng = random.Random(seed)
    prefix, groups = tuple(rng.randrange(5, 9) for _ in range(3)), []
    for line in range(positions):
        code = tuple(rng.randrange(20, 24) for _ in range(3))
        options = [Option(kind="act", ids=code[:1], loss_start=0, reward=0.0, advantage=rng.uniform(-1, 1))]
        for _ in range(rng.randrange(1, 3)):
            thought = (9, *(rng.randrange(30, 32) for _ in range(rng.randrange(1, 3))), 1, code[0])
            options.append(Option(kind="think", ids=thought, loss_start=0, reward=0.0, advantage=rng.uniform(-1, 1)))
        chosen = rng.randrange(len(options))
        groups.append(PositionGroup(line=line, prefix=prefix, options=options, chosen=chosen))
        prefix = (*prefix, *options[chosen].ids[:-1], *code)
    return groups


def _loss_events(batch):
    """(context up to and including the scored token, advantage) for every loss position."""
    events = []
    for r in range(batch["tokens"].shape[0]):
        for j in batch["loss_mask"][r].nonzero().flatten().tolist():
            context = (*batch["tokens"][r, : j + 1].tolist(), int(batch["labels"][r, j]))
            events.append((context, round(float(batch["advantages"][r, j]), 6)))
    return sorted(events)


@pytest.mark.parametrize("seed", range(6))
def test_folding_prefix_examples_keeps_every_loss_token_and_its_advantage(seed):
    from ra3_megatron.rl.batch import fold_prefixes

    groups = _walk(seed)
    plain = examples_from_groups(groups, max_tokens=1000, fold=False)
    folded = examples_from_groups(groups, max_tokens=1000)
    assert folded == fold_prefixes(plain)
    # every earlier act and chosen thought begins a later example: they ride in its row
    chosen_before_last = len(groups) - 1
    assert len(folded) <= len(plain) - chosen_before_last
    assert sum(len(e.spans()) for e in folded) == len(plain)
    assert _loss_events(build_batch(folded)) == _loss_events(build_batch(plain))
    assert sum(len(e.tokens) for e in folded) < sum(len(e.tokens) for e in plain)


def test_an_example_is_not_folded_into_one_whose_loss_overlaps_it_or_an_identical_one():
    from ra3_megatron.rl.batch import RLExample, fold_prefixes

    a = RLExample(tokens=(1, 2, 3), loss_from=2, advantage=0.5)
    overlapping = RLExample(tokens=(1, 2, 3, 4), loss_from=2, advantage=-0.5)  # loss from token 2 too
    twin = RLExample(tokens=(1, 2, 3), loss_from=2, advantage=0.1)
    assert sorted(fold_prefixes([a, overlapping, twin]), key=lambda e: e.advantage) == [overlapping, twin, a]
    after = RLExample(tokens=(1, 2, 3, 4), loss_from=3, advantage=-0.5)
    (row,) = fold_prefixes([after, a])
    assert row.spans() == [(2, 3, 0.5), (3, 4, -0.5)]


@pytest.mark.parametrize("kl", [0.0, 0.1])
def test_tree_rows_carry_the_engines_log_probs_of_each_loss_token(tiny_tokenizer_dir, kl):
    """`policy_batch` with a trainer that trains tree rows: the old (and reference) log-probs the
    engines give on linear rows land on the same loss tokens of the tree rows."""
    from ra3_megatron.estep.batch import run_searches
    from ra3_megatron.estep.config import EStepConfig
    from ra3_megatron.estep.rl import policy_batch
    from ra3_megatron.rollout.base import EngineCapabilities
    from ra3_megatron.rollout.fake import FakeEngine

    code = "".join(f"def f{i}(a, b):\n    x = a + {i}\n    y = x * b\n    return y\n" for i in range(3))
    sampler = FakeEngine(corpus=[code], tokenizer=str(tiny_tokenizer_dir))
    scorer = FakeEngine(corpus=[code], tokenizer=str(tiny_tokenizer_dir), copy_weight=0.3)
    sampler.capabilities = EngineCapabilities(trainer_exact_logprobs=True)

    class TreeTrainer(_RecordingTrainer):
        supports_tree_rows = True

    results = run_searches([("a", code), ("b", code)], sampler=sampler, scorer=scorer,
                           cfg=EStepConfig(decision="force", penalty=0.0, python=False), phase="rl0")
    examples = examples_from_groups((g for r in results for g in r.groups), 2048)
    batches = {}
    for rows in ("tree", "fold"):
        cfg = EStepConfig(rl_rows=rows, kl_coef=kl, python=False)
        trainer = TreeTrainer()
        batches[rows], record = policy_batch(examples, sampler=sampler, scorer=scorer, trainer=trainer, cfg=cfg,
                                             pad_id=0)
        assert record["row_layout"] == rows and record["rows"] == batches[rows]["tokens"].shape[0]
        assert trainer.logprob_calls == 0
    assert batches["tree"]["tokens"].shape[0] < batches["fold"]["tokens"].shape[0]
    keys = ["old_logprobs"] + (["ref_logprobs"] if kl else [])
    for key in keys:
        seen = {}
        for rows, batch in batches.items():
            events = []
            for r in range(batch["tokens"].shape[0]):
                for j in batch["loss_mask"][r].nonzero().flatten().tolist():
                    if rows == "tree":
                        allowed = (~batch["attention_mask"][r, 0, j]).nonzero().flatten()
                        order = allowed[batch["position_ids"][r, allowed].argsort()]
                        context = batch["tokens"][r, order].tolist()
                    else:
                        context = batch["tokens"][r, : j + 1].tolist()
                    events.append(((*context, int(batch["labels"][r, j])), round(float(batch[key][r, j]), 5)))
            seen[rows] = sorted(events)
        assert seen["tree"] == seen["fold"] and all(v < 0 for _, v in seen["tree"])


def test_engines_sleep_while_the_trainer_updates_q(tiny_tokenizer_dir, tmp_path):
    """pi's and q's engines free the accelerator for the update (vLLM's sleep mode on GPUs), and
    both are awake again for the weight sync and the next searches."""
    from ra3_megatron.estep.config import EStepConfig
    from ra3_megatron.estep.rl import run_rl
    from ra3_megatron.rollout.fake import FakeEngine

    class Sleepy(FakeEngine):
        asleep, naps = False, 0

        def sleep(self):
            self.asleep, self.naps = True, self.naps + 1

        def wake_up(self):
            self.asleep = False

    code = "def f(a, b):\n    x = a + b\n    y = x * 2\n    return y\n"
    sampler, scorer = (Sleepy(corpus=[code], tokenizer=str(tiny_tokenizer_dir)) for _ in range(2))
    synced = []
    sampler.load_weights = lambda d: synced.append(sampler.asleep)
    trainer = _RecordingTrainer(engines=(sampler, scorer))
    cfg = EStepConfig(rl_steps=2, rl_snippets=2, decision="force", penalty=0.05, python=False)
    run_rl(iter([("a", code), ("b", code)] * 2), sampler=sampler, scorer=scorer, trainer=trainer, cfg=cfg,
           work_dir=tmp_path)
    assert trainer.awake_during_step == [[False, False], [False, False]]
    assert sampler.naps == scorer.naps == 2 and not sampler.asleep and not scorer.asleep
    assert synced == [False, False]  # weights go into an awake engine


def test_rl_snippets_are_a_seeded_uniform_draw_over_the_whole_corpus():
    from collections import Counter

    from ra3_megatron.estep.rl import rl_seed, sample_snippets

    corpus = [(f"file{i:03d}.py#0", "x = 1\n") for i in range(200)]
    first = sample_snippets(iter(corpus), 16, rl_seed(0, 1))
    assert len(first) == len(set(first)) == 16
    assert first == sample_snippets(iter(corpus), 16, rl_seed(0, 1))  # reproducible
    assert set(first) != set(sample_snippets(iter(corpus), 16, rl_seed(0, 2)))  # new every EM round
    assert set(first) != set(corpus[:16])  # not the stream's head (the first files in path order)
    assert max(int(sid[4:7]) for sid, _ in first) >= 100  # the draw reaches the corpus's second half
    assert sorted(sample_snippets(iter(corpus[:5]), 16, 3)) == corpus[:5]  # fewer than asked: all of them
    counts = Counter(i for seed in range(400) for i in sample_snippets(range(20), 5, seed))
    assert len(counts) == 20 and max(counts.values()) < 1.5 * 100 and min(counts.values()) > 0.5 * 100  # uniform
