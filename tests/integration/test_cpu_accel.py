"""The opt-in CPU accelerator (`hf-cpu`, rollout/cpu_accel): its kernels against plain forwards, its
prefix store, and the engine held equal to the `hf` reference it accelerates."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace

import pytest
from rollout_helpers import max_diff, one_by_one, random_groups, same_samples

from ra3_megatron.rollout import SamplingConfig, ScoreGroup, ScoreOption, create_engine

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("max_batch_tokens", [40, 32768])  # many small batches / one batch
def test_prefix_cache_scorer_equals_full_forward(sharp_model, max_batch_tokens):
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import (
        ScorerConfig,
        score_groups_naive,
        score_groups_prefix_cache,
    )

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
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_prefix_cache

    with pytest.raises(ValueError, match="no context"):
        score_groups_prefix_cache(
            sharp_model, [ScoreGroup(prefix=(), options=(ScoreOption(middle=(), target=(5,)),))]
        )


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return create_engine("hf-cpu", model=str(tiny_model_dir))


def test_engine_scorers_agree(hf, tiny_model_dir):
    groups = random_groups(1, hf.model.config.vocab_size)
    naive = create_engine("hf-cpu", model=str(tiny_model_dir), scorer="naive")
    assert max_diff(hf.score_groups(groups), naive.score_groups(groups)) <= 1e-4
    with pytest.raises(ValueError, match="scorer"):
        create_engine("hf-cpu", model=str(tiny_model_dir), scorer="bogus")


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


def test_prefix_store_reuses_earlier_prefixes_and_stays_exact(sharp_model):
    from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_prefix_cache

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
    from ra3_megatron.rollout.cpu_accel.onednn import onednn_available, onednn_linears

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
    exact = create_engine("hf-cpu", model=str(tiny_model_dir))
    fast = create_engine("hf-cpu", model=str(tiny_model_dir), score_matmul_dtype="bfloat16")
    a, b = exact.score_groups(group)[0], fast.score_groups(group)[0]
    diffs = [abs(x - y) for o, p in zip(a, b) for x, y in zip(o, p)]
    assert 0 < max(diffs) < 0.5
    chain = fast.sequence_logprobs(ids[:30], 20)
    assert chain == pytest.approx(b[0], abs=0.05) and chain != pytest.approx(a[0], abs=1e-6)
    with pytest.raises(ValueError, match="score_matmul_dtype"):
        create_engine("hf-cpu", model=str(tiny_model_dir), score_matmul_dtype="float16")


@pytest.mark.parametrize("temperature,stored", [(0.0, False), (1.0, False), (1.0, True)])
def test_lean_decode_samples_as_transformers_forward(sharp_model, tiny_model_dir, monkeypatch, temperature,
                                                     stored):
    """The Llama prefill and decode step without transformers (`_packed_prefill`, `lean_decode`)
    against transformers' forward: prompts of different lengths (padding in the cache), rows
    leaving the batch, RoPE per row, and (stored) prompts whose start the prefix store holds,
    one of them wholly. Same tokens, log-probs to float rounding."""
    from transformers import AutoTokenizer

    from ra3_megatron.rollout.cpu_accel import hf_sampling
    from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore

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
    from ra3_megatron.rollout.cpu_accel import hf_sampling
    from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore

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


@pytest.fixture(scope="module")
def sharp_dir(sharp_model, tiny_model_dir, tmp_path_factory):
    """The sharp tiny Llama as a checkpoint folder, for engines to load."""
    import shutil

    d = tmp_path_factory.mktemp("sharp")
    sharp_model.save_pretrained(d)
    for f in tiny_model_dir.iterdir():
        if "token" in f.name:
            shutil.copy(f, d / f.name)
    return d


def test_the_accelerator_answers_as_the_reference(sharp_dir):
    """hf-cpu against hf on the same weights, float32: scores, decision probes, `<act>` chains and
    seeded samples (several prompts per call, n > 1, stop strings, its prefix store warm)."""
    ref = create_engine("hf", model=str(sharp_dir))
    fast = create_engine("hf-cpu", model=str(sharp_dir))
    vocab = ref.model.config.vocab_size
    groups = random_groups(7, vocab)[:-2]
    assert max_diff(fast.score_groups(groups), ref.score_groups(groups)) <= 1e-4
    rng = random.Random(1)
    ids = [rng.randrange(vocab) for _ in range(80)]
    positions, tokens = [5, 30, 31, 80], [ids[5], 3, 4, 9]
    assert fast.token_logprobs_at(ids, positions, tokens) == pytest.approx(ref.token_logprobs_at(ids, positions, tokens),
                                                                          abs=1e-4)
    assert fast.sequence_logprobs(ids, 40) == pytest.approx(ref.sequence_logprobs(ids, 40), abs=1e-4)
    prompts = ["import os\nimport", ids[:50] + [3], "x = ", ids[:20]]
    configs = [SamplingConfig(n=k + 1, temperature=1.0, max_tokens=12, stop=("\n",), seed=30 + k, logprobs=True)
               for k in range(len(prompts))]
    got, want = fast.generate(prompts, configs), ref.generate(prompts, configs)
    assert all(same_samples(a, b, tol=1e-4) for a, b in zip(got, want))
    assert sum(len(c.token_ids) for p in want for c in p) > 20  # real samples, not empty ones
    assert fast.store.reused_tokens > 0  # the prompts started from the probe's stored K/V
