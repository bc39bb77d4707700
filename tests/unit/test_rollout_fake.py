"""The deterministic fake rollout engine: its model, sampling, scoring and weight reload."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from ra3_megatron.errors import InputError
from ra3_megatron.rollout import RolloutEngine, SamplingConfig, ScoreGroup, ScoreOption, create_engine
from ra3_megatron.rollout.byte_tokenizer import ByteTokenizer
from ra3_megatron.rollout.common import cut_at_stop, prompt_ids
from ra3_megatron.rollout.fake import FakeEngine, _Context

pytestmark = pytest.mark.unit

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture
def engine():
    return FakeEngine(corpus=(CODE, "x = 1\ny = 2\n"))


def test_byte_tokenizer_round_trip_and_eos():
    tok = ByteTokenizer()
    ids = tok.encode("héllo\n")
    assert tok.decode(ids) == "héllo\n" and len(tok) == 258
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "héllo\n"
    assert tok.decode([104, tok.eos_token_id]).endswith(tok.eos_token)


def test_helpers():
    assert cut_at_stop("ab\ncd", ("\n",)) == ("ab", True)
    assert cut_at_stop("abcd", ("x", "")) == ("abcd", False)
    assert cut_at_stop("a;b\nc", ("\n", ";")) == ("a", True)
    assert prompt_ids(ByteTokenizer(), "ab") == [97, 98]
    with pytest.raises(ValueError):
        prompt_ids(ByteTokenizer(), "")


def test_registry_creates_fake_and_it_meets_the_protocol():
    eng = create_engine("fake", corpus=[CODE], copy_weight=0.3)
    assert isinstance(eng, RolloutEngine) and eng.config.copy_weight == 0.3
    with pytest.raises(TypeError):
        create_engine("fake", no_such_field=1)


@pytest.mark.parametrize("text", ["", "def", "    return a", CODE])
def test_distribution_sums_to_one(engine, text):
    ctx = engine._context(engine.tokenizer.encode(text))
    probs, floor = engine.distribution(ctx)
    total = sum(probs.values()) + floor * (engine.V - len(probs))
    assert total == pytest.approx(1.0, abs=1e-9)
    assert all(p >= floor for p in probs.values())


def test_scores_follow_the_documented_model(engine):
    prefix = engine.tokenizer.encode("ab")
    target = engine.tokenizer.encode("ab")
    [[got]] = engine.score_groups(
        [ScoreGroup(prefix=tuple(prefix), options=(ScoreOption(middle=(), target=tuple(target)),))]
    )
    # First target token 'a' after context "ab": 'b' was never followed in the context, so lam = 0.
    cfg, a, x = engine.config, prefix[-1], target[0]
    w = engine._w(a, x)
    z = sum(engine._w(a, y) * c for y, c in engine.bigram[a].items()) + cfg.alpha * engine.V
    assert got[0] == pytest.approx(math.log((w * engine.bigram[a][x] + cfg.alpha) / z))
    # Second target token 'b' after "aba": 'a' was followed once, by 'b', so the copy term is 1.
    a, x = target[0], target[1]
    z = sum(engine._w(a, y) * c for y, c in engine.bigram[a].items()) + cfg.alpha * engine.V
    p_big = (engine._w(a, x) * engine.bigram[a][x] + cfg.alpha) / z
    assert got[1] == pytest.approx(math.log((1 - cfg.copy_weight) * p_big + cfg.copy_weight * 1.0))


def test_middle_is_context_not_scored(engine):
    enc = engine.tokenizer.encode
    a = engine.score_groups(
        [
            ScoreGroup(
                prefix=tuple(enc("def f")),
                options=(ScoreOption(middle=tuple(enc("(x)")), target=tuple(enc(":\n"))),),
            )
        ]
    )
    b = engine.score_groups(
        [
            ScoreGroup(
                prefix=tuple(enc("def f(x)")), options=(ScoreOption(middle=(), target=tuple(enc(":\n"))),)
            )
        ]
    )
    assert a == b and len(a[0][0]) == 2


def test_planted_signal_a_thought_naming_the_next_line_raises_its_likelihood(engine):
    enc = engine.tokenizer.encode
    nxt = "    total = compute_total(items)\n"
    group = ScoreGroup(
        prefix=tuple(enc("def f(items):\n")),
        options=(
            ScoreOption(middle=(), target=tuple(enc(nxt))),
            ScoreOption(middle=tuple(enc("    # total = compute_total(items)\n")), target=tuple(enc(nxt))),
            ScoreOption(middle=tuple(enc("    # unrelated words here\n")), target=tuple(enc(nxt))),
        ),
    )
    act, helpful, unrelated = (sum(s) for s in engine.score_groups([group])[0])
    assert helpful > act + 10 and helpful > unrelated + 10


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine):
    cfg = SamplingConfig(n=4, temperature=1.0, max_tokens=12, seed=3, logprobs=True)
    a = engine.generate(["def ", "x = "], cfg)
    b = FakeEngine(corpus=(CODE, "x = 1\ny = 2\n")).generate(["def ", "x = "], cfg)
    assert a == b and len(a) == 2 and all(len(c) == 4 for c in a)
    c = engine.generate(["def ", "x = "], SamplingConfig(n=4, temperature=1.0, max_tokens=12, seed=4))
    assert [x.token_ids for x in a[0]] != [x.token_ids for x in c[0]]
    # Unseeded requests draw from the engine's stream: two calls differ.
    u = SamplingConfig(n=4, max_tokens=12)
    assert engine.generate(["def "], u) != engine.generate(["def "], u)


def test_stop_at_newline_and_max_tokens(engine):
    outs = engine.generate(["def add(a, b):\n"], SamplingConfig(n=16, max_tokens=40, stop=("\n",), seed=0))[0]
    assert len(outs) == 16
    stopped = [c for c in outs if c.finish_reason == "stop"]
    assert stopped, "some sample should reach a newline"
    for c in outs:
        full = engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert "\n" not in c.text and full.startswith(c.text) and len(c.token_ids) <= 40
        if c.finish_reason == "stop" and c.token_ids[-1] != 256:
            assert full == c.text + "\n"  # byte tokens: the newline is the last token
        else:
            assert "\n" not in full
    capped = engine.generate(["x"], SamplingConfig(n=4, max_tokens=3, seed=0))[0]
    for c in capped:
        assert (len(c.token_ids), c.finish_reason) == (3, "length") or c.token_ids[-1] == 256


def test_sample_logprobs_equal_scores_of_the_sampled_tokens(engine):
    prompt = engine.tokenizer.encode("def sub(")
    outs = engine.generate(
        [prompt], SamplingConfig(n=3, temperature=0.7, max_tokens=15, seed=1, logprobs=True)
    )[0]
    groups = [
        ScoreGroup(
            prefix=tuple(prompt), options=tuple(ScoreOption(middle=(), target=c.token_ids) for c in outs)
        )
    ]
    for c, s in zip(outs, engine.score_groups(groups)[0]):
        assert list(c.logprobs) == pytest.approx(s, abs=1e-12)


def test_greedy_takes_the_most_likely_token(engine):
    prompt = engine.tokenizer.encode("def add(a, b):\n    ret")
    [[c]] = engine.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=1))
    probs, floor = engine.distribution(engine._context(prompt))
    assert probs[c.token_ids[0]] == max(probs.values()) > floor


def test_sampling_frequencies_match_the_distribution():
    eng = FakeEngine(corpus=("ab ac ab ad ab",), alpha=0.5, copy_weight=0.0)
    ctx = eng._context(eng.tokenizer.encode("a"))
    probs, floor = eng.distribution(ctx)
    outs = eng.generate(["a"], SamplingConfig(n=4000, max_tokens=1, seed=0))[0]
    freq = Counter(c.token_ids[0] for c in outs)
    for x, p in probs.items():
        assert abs(freq[x] / 4000 - p) < 4 * math.sqrt(p * (1 - p) / 4000) + 1e-3
    rest = 1 - sum(probs.values())
    assert abs(sum(v for k, v in freq.items() if k not in probs) / 4000 - rest) < 0.03


def test_top_p_keeps_only_the_nucleus():
    eng = FakeEngine(corpus=("ab " * 50 + "ac",), alpha=0.01, copy_weight=0.0)
    outs = eng.generate(["a"], SamplingConfig(n=200, max_tokens=1, top_p=0.5, seed=0))[0]
    assert {c.token_ids[0] for c in outs} == {ord("b")}


def test_load_weights_from_fake_file_and_from_safetensors(engine, tmp_path):
    group = [
        ScoreGroup(prefix=tuple(b"def add"), options=(ScoreOption(middle=(), target=tuple(b"(a, b):")),))
    ]
    before = engine.score_groups(group)
    other = FakeEngine(corpus=(CODE, "x = 1\ny = 2\n"), seed=9)
    other.save_weights(tmp_path / "w")
    engine.load_weights(str(tmp_path / "w"))
    assert engine.config.seed == 9 and engine.score_groups(group) == other.score_groups(group) != before
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "model.safetensors").write_bytes(b"weights v1")
    engine.load_weights(str(tmp_path / "st"))
    first = engine.config.seed
    (tmp_path / "st" / "model.safetensors").write_bytes(b"weights v2")
    engine.load_weights(str(tmp_path / "st"))
    assert first != engine.config.seed and len(engine.reload_seconds) == 3
    with pytest.raises(InputError, match="no fake_lm.json"):
        engine.load_weights(str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "fake_lm.json").write_text("{}")
    with pytest.raises(InputError, match="fake_lm.json"):
        engine.load_weights(str(tmp_path / "bad"))


def test_no_context_before_target_is_an_error(engine):
    with pytest.raises(ValueError, match="no context"):
        engine.score_groups([ScoreGroup(prefix=(), options=(ScoreOption(middle=(), target=(1, 2)),))])


def test_overlay_context_does_not_touch_the_shared_prefix(engine):
    prefix = engine._context(engine.tokenizer.encode("abab"))
    snapshot = {k: dict(v) for k, v in prefix.counts.items()}
    child = _Context(prefix)
    for x in engine.tokenizer.encode("abc"):
        engine._push(child, x)
    assert {k: dict(v) for k, v in prefix.counts.items()} == snapshot
    assert child.followers(ord("b"))[ord("a")] == 2 and child.followers(ord("b"))[ord("c")] == 1
