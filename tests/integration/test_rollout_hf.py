"""The transformers backend: the prefix-cache scorer against plain forwards, sampling, weight reload."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace

import pytest

from ra3_megatron.errors import InputError
from ra3_megatron.rollout import SamplingConfig, ScoreGroup, ScoreOption, create_engine

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir):
    """The tiny Llama with larger random weights: log-probs vary by nats, so errors show."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return model


def random_groups(seed: int, vocab: int, n_groups: int = 6) -> list[ScoreGroup]:
    rng = random.Random(seed)

    def toks(n):
        return tuple(rng.randrange(vocab) for _ in range(n))

    groups = []
    for _ in range(n_groups):
        opts = [ScoreOption(middle=(), target=toks(rng.randint(1, 12)))]
        opts += [
            ScoreOption(middle=toks(rng.randint(1, 7)), target=toks(rng.randint(0, 12)))
            for _ in range(rng.randint(0, 4))
        ]
        groups.append(ScoreGroup(prefix=toks(rng.randint(1, 40)), options=tuple(opts)))
    groups.append(
        ScoreGroup(prefix=(), options=(ScoreOption(middle=toks(3), target=toks(4)),))
    )  # naive fallback
    groups.append(ScoreGroup(prefix=toks(5), options=()))
    return groups


def one_by_one(model, groups):
    from ra3_megatron.rollout.prefix_scorer import score_groups_one_by_one

    return score_groups_one_by_one(model, groups)


def max_diff(a, b):
    assert [[len(o) for o in g] for g in a] == [[len(o) for o in g] for g in b]
    return max(abs(x - y) for ga, gb in zip(a, b) for oa, ob in zip(ga, gb) for x, y in zip(oa, ob))


@pytest.mark.parametrize("max_batch_tokens", [40, 32768])  # many small batches / one batch
def test_prefix_cache_scorer_equals_full_forward(sharp_model, max_batch_tokens):
    from ra3_megatron.rollout.prefix_scorer import ScorerConfig, score_groups_naive, score_groups_prefix_cache

    groups = random_groups(0, sharp_model.config.vocab_size)
    truth = one_by_one(sharp_model, groups)
    fast = score_groups_prefix_cache(
        sharp_model, groups, ScorerConfig(max_batch_tokens=max_batch_tokens, head_chunk=7)
    )
    naive = score_groups_naive(sharp_model, groups, batch_rows=3)
    flat = [x for g in truth for o in g for x in o]
    assert statistics.pstdev(flat) > 0.5, (
        "the model must be sharp enough for the comparison to mean something"
    )
    assert max_diff(fast, truth) <= 1e-4
    assert max_diff(naive, truth) <= 1e-4


def test_scorer_refuses_a_target_without_context(sharp_model):
    from ra3_megatron.rollout.prefix_scorer import score_groups_prefix_cache

    with pytest.raises(ValueError, match="no context"):
        score_groups_prefix_cache(
            sharp_model, [ScoreGroup(prefix=(), options=(ScoreOption(middle=(), target=(5,)),))]
        )


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return create_engine("hf", model=str(tiny_model_dir))


def test_engine_scorers_agree(hf, tiny_model_dir):
    groups = random_groups(1, hf.model.config.vocab_size)
    naive = create_engine("hf", model=str(tiny_model_dir), scorer="naive")
    assert max_diff(hf.score_groups(groups), naive.score_groups(groups)) <= 1e-4
    with pytest.raises(ValueError, match="scorer"):
        create_engine("hf", model=str(tiny_model_dir), scorer="bogus")


def test_sampling_seeded_stop_n_and_logprobs(hf):
    cfg = SamplingConfig(n=3, temperature=1.0, max_tokens=30, stop=("\n",), seed=11, logprobs=True)
    prompt = "def add(a, b):\n    return"
    a, b = hf.generate([prompt, prompt], cfg)
    assert same_samples(a, b) and len(a) == 3
    assert a != hf.generate([prompt], SamplingConfig(n=3, max_tokens=30, seed=12))[0]
    ids = hf.tokenizer.encode(prompt, add_special_tokens=False)
    scores = hf.score_groups(
        [ScoreGroup(prefix=tuple(ids), options=tuple(ScoreOption(middle=(), target=c.token_ids) for c in a))]
    )
    for c, s in zip(a, scores[0]):
        assert "\n" not in c.text and len(c.token_ids) <= 30 and len(c.logprobs) == len(c.token_ids)
        assert list(c.logprobs) == pytest.approx(s, abs=1e-4)  # sampling log-probs = scores of the sample
        full = hf.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert full.startswith(c.text)
        assert ("\n" in full) == (c.finish_reason == "stop" and c.token_ids[-1] != hf.tokenizer.eos_token_id)


def same_samples(a, b, tol=1e-5) -> bool:
    """Equal samples; log-probs to float rounding (a prompt's prefill may start from stored K/V)."""
    return len(a) == len(b) and all(
        (x.text, x.token_ids, x.finish_reason) == (y.text, y.token_ids, y.finish_reason)
        and (x.logprobs is None) == (y.logprobs is None)
        and all(abs(u - v) <= tol for u, v in zip(x.logprobs or (), y.logprobs or ()))
        for x, y in zip(a, b)
    )


def test_batched_prompts_sample_as_they_would_alone(hf):
    """Prompts of different lengths share one left-padded decode loop; each must get the samples
    (and greedy tokens) it gets alone, so padding, masks and positions are right."""
    prompts = ["import os\nimport", "def add(a, b):\n    return a", "x", "class A:\n    def f(self):\n        return"]
    for cfg in (SamplingConfig(n=2, temperature=1.0, max_tokens=12, seed=5, logprobs=True),
                SamplingConfig(n=1, temperature=0.0, max_tokens=12, logprobs=True)):
        hf.store.clear()
        together = hf.generate(prompts, cfg)
        for p, got in zip(prompts, together):
            hf.store.clear()
            assert same_samples(got, hf.generate([p], cfg)[0], tol=1e-4), p
    # A K/V budget too small for two prompts: one decode loop each, the same samples.
    full = hf.config
    hf.config = replace(full, sample_kv_mb=0)
    try:
        hf.store.clear()
        assert all(same_samples(a, b, tol=1e-4) for a, b in zip(hf.generate(prompts, cfg), together))
    finally:
        hf.config = full
    # One config per prompt (own n, own seed), as the E-step asks: still each as alone.
    each = [SamplingConfig(n=k + 1, temperature=1.0, max_tokens=10, seed=20 + k) for k in range(len(prompts))]
    hf.store.clear()
    varied = hf.generate(prompts, each)
    assert [len(v) for v in varied] == [1, 2, 3, 4]
    for p, c, got in zip(prompts, each, varied):
        hf.store.clear()
        assert same_samples(got, hf.generate([p], c)[0], tol=1e-4), p
    with torch.inference_mode():
        ids = hf.tokenizer.encode(prompts[3], add_special_tokens=False)
        ref = hf.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                                pad_token_id=hf.tokenizer.pad_token_id)[0, len(ids):].tolist()
    assert list(together[3][0].token_ids) == ref[: len(together[3][0].token_ids)]


def test_prompts_reuse_stored_prefixes_and_probes_agree_with_scores(hf):
    """A probe pass over a sequence stores its K/V; a prompt sharing its start computes only the
    rest (store.reused_tokens grows) and samples as from scratch."""
    ids = hf.tokenizer.encode("import os\nimport sys\n\ndef main():\n    return 1\n", add_special_tokens=False)
    positions, tokens = [3, len(ids) - 2], [ids[3], 7]
    hf.store.clear()
    lp = hf.token_logprobs_at(ids, positions, tokens)
    for p, t, x in zip(positions, tokens, lp):
        ref = hf.score_groups([ScoreGroup(prefix=tuple(ids[:p]), options=(ScoreOption((), (t,)),))])[0][0][0]
        assert x == pytest.approx(ref, abs=1e-4)
    for start in (1, 5, len(ids) - 1):  # the E-step's <act> chain: the code's own log-probs
        chain = hf.sequence_logprobs(ids, start)
        ref = hf.score_groups([ScoreGroup(prefix=tuple(ids[:start]), options=(ScoreOption((), tuple(ids[start:])),))])
        assert chain == pytest.approx(ref[0][0], abs=1e-4) and len(chain) == len(ids) - start
    hf.store.clear()
    hf.token_logprobs_at(ids, positions, tokens)
    before = hf.store.reused_tokens
    cfg = SamplingConfig(n=2, temperature=1.0, max_tokens=10, seed=3, logprobs=True)
    prompt = ids[:-3] + hf.tokenizer.encode("#", add_special_tokens=False)
    reused = hf.generate([prompt], cfg)[0]
    assert hf.store.reused_tokens - before == len(ids) - 3
    hf.store.clear()
    assert same_samples(reused, hf.generate([prompt], cfg)[0], tol=1e-4)


def test_stop_at_newline_happens(hf):
    outs = hf.generate(
        ["a\n" * 40], SamplingConfig(n=16, temperature=1.0, max_tokens=40, stop=("\n",), seed=0)
    )[0]
    stopped = [c for c in outs if c.finish_reason == "stop"]
    assert stopped and len(outs) == 16
    for c in stopped:
        assert "\n" not in c.text and "\n" in hf.tokenizer.decode(c.token_ids)


def test_greedy_matches_transformers_generate(hf):
    ids = hf.tokenizer.encode("import os\nimport", add_special_tokens=False)
    [[c]] = hf.generate([ids], SamplingConfig(n=1, temperature=0.0, max_tokens=8))
    with torch.inference_mode():
        ref = hf.model.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=8,
            min_new_tokens=8,
            pad_token_id=hf.tokenizer.pad_token_id,
        )[0, len(ids) :].tolist()
    assert list(c.token_ids) == ref[: len(c.token_ids)]


def test_load_weights_changes_scores_to_the_new_model(tiny_model_dir, tmp_path):
    from ra3_megatron.models.tiny import tiny_model_dir as build

    eng = create_engine("hf", model=str(tiny_model_dir))
    new_dir = build(seed=1)
    groups = random_groups(2, eng.model.config.vocab_size)
    before = eng.score_groups(groups)
    eng.load_weights(str(new_dir))
    after = eng.score_groups(groups)
    assert max_diff(after, create_engine("hf", model=str(new_dir)).score_groups(groups)) <= 1e-5
    assert max_diff(after, before) > 1e-2
    assert len(eng.reload_seconds) == 1 and eng.reload_seconds[0] < 30
    with pytest.raises(InputError, match="safetensors"):
        eng.load_weights(str(tmp_path))


def test_prefix_store_reuses_earlier_prefixes_and_stays_exact(sharp_model):
    from ra3_megatron.rollout.kv_store import PrefixKVStore
    from ra3_megatron.rollout.prefix_scorer import score_groups_prefix_cache

    rng = random.Random(3)
    store = PrefixKVStore(1 << 30)
    first = random_groups(3, sharp_model.config.vocab_size)[:6]
    score_groups_prefix_cache(sharp_model, first, store=store)
    assert len(store) == 6 and store.hits == 0
    # The E-step walk: the next prefixes extend the earlier ones (by 0 to 9 tokens), plus a new one.
    later = [
        ScoreGroup(prefix=g.prefix + tuple(rng.randrange(50, 900) for _ in range(k)), options=g.options)
        for k, g in zip((0, 1, 4, 9, 2, 5), first)
    ]
    later.append(ScoreGroup(prefix=(7, 8, 9), options=first[0].options))
    got = score_groups_prefix_cache(sharp_model, later, store=store)
    assert max_diff(got, one_by_one(sharp_model, later)) <= 1e-4
    assert store.hits == 6 and store.reused_tokens >= sum(len(g.prefix) for g in first) - 6
    assert len(store) == 7  # each extended prefix replaced the one it grew from


def test_onednn_linears_same_math_and_restored(sharp_model):
    from ra3_megatron.rollout.onednn import onednn_available, onednn_linears

    if not onednn_available():
        pytest.skip("this torch has no oneDNN linear op")
    ids = torch.tensor([list(range(5, 60))])
    with torch.inference_mode():
        ref = sharp_model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="boom"), onednn_linears(sharp_model):
            patched = [m for m in sharp_model.modules() if "forward" in m.__dict__]
            got = sharp_model(input_ids=ids).logits
            raise RuntimeError("boom")
    assert len(patched) == 2 * 7 + 1  # per layer q, k, v, o, gate, up, down; plus the head
    assert (got - ref).abs().max().item() <= 1e-4
    assert not [m for m in sharp_model.modules() if "forward" in m.__dict__]


def test_inverse_cdf_sampling_follows_the_distribution():
    """The decode loop's sampler: frequencies over 40k draws match softmax(logits / T), top-p
    keeps exactly the smallest set reaching p, and a zero-probability token never comes out."""
    from ra3_megatron.rollout.hf_engine import HFEngine

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5]]).expand(40000, -1)
    gen = torch.Generator().manual_seed(0)
    for cfg, want in (
        (SamplingConfig(temperature=1.0), torch.softmax(logits[0], -1)),
        (SamplingConfig(temperature=2.0), torch.softmax(logits[0] / 2, -1)),
    ):
        freq = torch.bincount(HFEngine._pick(None, logits, cfg, gen), minlength=6).double() / 40000
        assert torch.allclose(freq, want.double(), atol=0.01), (freq, want)
        assert freq[4] == 0
    p = torch.softmax(logits[0], -1)  # top-p 0.8 keeps 0, 1 (0.56 + 0.21 < 0.8) and 5 (+ 0.13 reaches it)
    freq = torch.bincount(HFEngine._pick(None, logits, SamplingConfig(top_p=0.8), gen), minlength=6).double()
    kept = torch.tensor([0, 1, 5])
    assert freq[[2, 3, 4]].sum() == 0
    assert torch.allclose(freq[kept] / 40000, (p[kept] / p[kept].sum()).double(), atol=0.01)


def test_scoring_reuses_a_longer_stored_pass_and_stays_exact(hf):
    """A pass over a whole sequence (the E-step's <act> chain) holds the K/V of every prefix of
    it: scoring groups whose prefixes lie inside it computes ~1 prefix token each, adds no
    entry, and gives the scores of a fresh engine."""
    ids = hf.tokenizer.encode("import os\nimport sys\n\ndef main(argv):\n    return len(argv)\n" * 3,
                              add_special_tokens=False)
    groups = [ScoreGroup(prefix=tuple(ids[:p]), options=(ScoreOption((), tuple(ids[p:p + 6])),
                                                         ScoreOption((5, 6), tuple(ids[p:p + 6]))))
              for p in (10, 25, 40)]
    hf.store.clear()
    fresh = hf.score_groups(groups)
    hf.store.clear()
    hf.sequence_logprobs(ids, 1)
    entries, reused = len(hf.store), hf.store.reused_tokens
    again = hf.score_groups(groups)
    assert len(hf.store) == entries and hf.store.reused_tokens - reused == 9 + 24 + 39
    for a, b in zip(again, fresh):
        for x, y in zip(a, b):
            assert x == pytest.approx(y, abs=1e-4)


def test_bf16_scoring_is_close_to_float32_and_the_chain_follows_it(tiny_model_dir):
    """score_matmul_dtype=bfloat16: scores (and the <act> chain, kept alike) move by bf16
    rounding only; a bogus dtype is refused."""
    ids = list(range(5, 45))
    group = [ScoreGroup(prefix=tuple(ids[:20]), options=(ScoreOption((), tuple(ids[20:30])),
                                                         ScoreOption((7, 8), tuple(ids[20:30]))))]
    exact = create_engine("hf", model=str(tiny_model_dir))
    fast = create_engine("hf", model=str(tiny_model_dir), score_matmul_dtype="bfloat16")
    a, b = exact.score_groups(group)[0], fast.score_groups(group)[0]
    diffs = [abs(x - y) for o, p in zip(a, b) for x, y in zip(o, p)]
    assert 0 < max(diffs) < 0.5
    chain = fast.sequence_logprobs(ids[:30], 20)
    assert chain == pytest.approx(b[0], abs=0.05) and chain != pytest.approx(a[0], abs=1e-6)
    with pytest.raises(ValueError, match="score_matmul_dtype"):
        create_engine("hf", model=str(tiny_model_dir), score_matmul_dtype="float16")


@pytest.mark.parametrize("temperature,stored", [(0.0, False), (1.0, False), (1.0, True)])
def test_lean_decode_samples_as_transformers_forward(sharp_model, tiny_model_dir, monkeypatch, temperature,
                                                     stored):
    """The Llama prefill and decode step without transformers (`_packed_prefill`, `lean_decode`)
    against transformers' forward: prompts of different lengths (padding in the cache), rows
    leaving the batch, RoPE per row, and (stored) prompts whose start the prefix store holds,
    one of them wholly. Same tokens, log-probs to float rounding."""
    from transformers import AutoTokenizer

    from ra3_megatron.rollout import hf_sampling
    from ra3_megatron.rollout.kv_store import PrefixKVStore

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rng = random.Random(3)
    prompts = [[rng.randrange(tok.vocab_size) for _ in range(n)] for n in (3, 17, 9)]
    cfg = SamplingConfig(n=1, temperature=temperature, max_tokens=12, logprobs=True)
    store = None
    if stored:
        store = PrefixKVStore(64 << 20)
        with torch.inference_mode():
            for ids in (prompts[1][:11], prompts[2] + [5, 6]):  # part of one prompt; more than another
                hf_sampling._forward_with_store(sharp_model, ids, store)

    def run():
        gens = [torch.Generator().manual_seed(40 + i) for i in range(len(prompts))]
        with torch.inference_mode():
            return hf_sampling.sample_batched(sharp_model, tok, prompts, [2, 1, 3], cfg, gens, store)

    assert hf_sampling.packable(sharp_model)
    lean = run()
    monkeypatch.setattr(hf_sampling, "packable", lambda model: False)
    plain = run()
    assert all(same_samples(a, b, tol=1e-4) for a, b in zip(lean, plain))
    assert sum(len(c.token_ids) for p in lean for c in p) > 6 * 3
    if stored:
        assert store.reused_tokens == 2 * (11 + 8)  # both runs: 11 of prompt 1, all but the last of prompt 2


def test_probe_and_chain_passes_agree_between_packed_and_transformers_forward(sharp_model, monkeypatch):
    """`_forward_with_store` runs Llama-family models through PackedDecoder and others through
    transformers: the same log-probs, the same stored K/V, with and without a stored prefix."""
    from ra3_megatron.rollout import hf_sampling
    from ra3_megatron.rollout.kv_store import PrefixKVStore

    rng = random.Random(5)
    ids = [rng.randrange(sharp_model.config.vocab_size) for _ in range(60)]
    fork = ids[:35] + [rng.randrange(sharp_model.config.vocab_size) for _ in range(10)]

    def run():
        store = PrefixKVStore(1 << 26)
        with torch.inference_mode():
            chain = hf_sampling.sequence_logprobs(sharp_model, ids, 5, store)
            probe = hf_sampling.probe_logprobs(sharp_model, fork, [36, 40, 45], [1, 2, 3], store)  # reuses 35
            kv = store.longest_common(fork)[1]
        return chain, probe, kv, store.reused_tokens

    packed = run()
    monkeypatch.setattr(hf_sampling, "packable", lambda model: False)
    plain = run()
    assert packed[3] == plain[3] == 35
    assert packed[0] == pytest.approx(plain[0], abs=1e-4) and packed[1] == pytest.approx(plain[1], abs=1e-4)
    for (k1, v1), (k2, v2) in zip(packed[2], plain[2]):
        assert k1.shape == k2.shape and torch.allclose(k1, k2, atol=1e-4) and torch.allclose(v1, v2, atol=1e-4)
