"""The prefix-cache scorer's speed paths: packed decoder, bf16 matmuls, chunked head, store layout.

Small random Llama (grouped-query attention) and Qwen2 (q/k/v biases) models are built in
memory with large weights, so log-probs vary by nats and errors show. Every path is compared
with the plainest truth: each full sequence alone through the transformers forward.
"""

from __future__ import annotations

import random

import pytest

from ra3_megatron.rollout import ScoreGroup, ScoreOption

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")

VOCAB = 300


def make_model(kind: str, seed: int = 0):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    dims = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**dims, attention_bias=True, mlp_bias=True))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**dims, use_sliding_window=False))
    elif kind == "mistral-window":
        model = MistralForCausalLM(MistralConfig(**dims, sliding_window=4096))
    else:
        raise ValueError(kind)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            else:  # norm weights
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.2)
    return model.to(torch.float32).eval()


@pytest.fixture(scope="module")
def llama():
    return make_model("llama")


@pytest.fixture(scope="module")
def qwen2():
    return make_model("qwen2")


def toks(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randrange(VOCAB) for _ in range(n))


def groups_for(seed: int) -> list[ScoreGroup]:
    """Ragged groups: empty middles and targets, one-token targets (no option tokens run), one
    option or five, a prefix longer than an attention query block (256) and a group whose
    options together are longer than one."""
    rng = random.Random(seed)
    groups = []
    for _ in range(5):
        opts = [ScoreOption(middle=(), target=toks(rng, rng.randint(1, 12)))]
        opts += [
            ScoreOption(middle=toks(rng, rng.randint(1, 7)), target=toks(rng, rng.randint(0, 12)))
            for _ in range(rng.randint(0, 4))
        ]
        groups.append(ScoreGroup(prefix=toks(rng, rng.randint(1, 40)), options=tuple(opts)))
    groups.append(
        ScoreGroup(prefix=toks(rng, 300), options=(ScoreOption(middle=toks(rng, 3), target=toks(rng, 5)),))
    )
    wide = tuple(ScoreOption(middle=toks(rng, 30), target=toks(rng, 40)) for _ in range(5))
    groups.append(ScoreGroup(prefix=toks(rng, 20), options=wide + (ScoreOption(middle=(), target=(7,)),)))
    return groups


def one_by_one(model, groups):
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_one_by_one

    return score_groups_one_by_one(model, groups)


def max_diff(a, b) -> float:
    assert [[len(o) for o in g] for g in a] == [[len(o) for o in g] for g in b]
    return max(abs(x - y) for ga, gb in zip(a, b) for oa, ob in zip(ga, gb) for x, y in zip(oa, ob))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("max_batch_tokens", [150, 32768])  # many small batches / one batch
def test_packed_path_equals_full_forward(kind, max_batch_tokens, llama, qwen2):
    from ra3_megatron.rollout.cpu_accel.packed_llama import packable
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import ScorerConfig, score_groups_prefix_cache

    model = {"llama": llama, "qwen2": qwen2}[kind]
    assert packable(model)
    groups = groups_for(0)
    truth = one_by_one(model, groups)
    flat = [x for g in truth for o in g for x in o]
    assert max(flat) - min(flat) > 5, "the model must be sharp enough for the comparison to mean something"
    cfg = ScorerConfig(max_batch_tokens=max_batch_tokens, head_chunk=5)
    assert max_diff(score_groups_prefix_cache(model, groups, cfg), truth) <= 1e-4


def test_packed_path_with_one_option_per_group(llama):
    """Every option then has a prefix of its own: the option pass takes the per-segment way."""
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_prefix_cache

    groups = [ScoreGroup(prefix=g.prefix, options=g.options[-1:]) for g in groups_for(1)]
    assert max_diff(score_groups_prefix_cache(llama, groups), one_by_one(llama, groups)) <= 1e-4


def test_unpackable_model_takes_the_transformers_path(llama):
    from ra3_megatron.rollout.cpu_accel.packed_llama import packable
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_prefix_cache

    windowed = make_model("mistral-window")
    assert not packable(windowed)
    assert not packable(make_model("llama").to(torch.bfloat16))
    groups = groups_for(2)[:4]
    assert max_diff(score_groups_prefix_cache(windowed, groups), one_by_one(windowed, groups)) <= 1e-4


def test_store_entries_are_interchangeable_between_paths(llama):
    """Sampling and probes read the same store: the packed path must write (and read) K/V in the
    transformers layout, [kv_heads, length, head_dim] after RoPE."""
    from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import ScorerConfig, score_groups_prefix_cache

    rng = random.Random(3)
    first = groups_for(3)
    later = [
        ScoreGroup(prefix=g.prefix + toks(rng, k), options=g.options)
        for k, g in zip((0, 1, 4, 9, 2, 5, 30), first)
    ]
    truth = one_by_one(llama, later)
    stores = {}
    for packed in (True, False):
        stores[packed] = PrefixKVStore(1 << 30)
        score_groups_prefix_cache(llama, first, ScorerConfig(packed=packed), store=stores[packed])
    assert len(stores[True]) == len(first)
    for g in first:
        (_, a), (_, b) = stores[True].lookup(g.prefix), stores[False].lookup(g.prefix)
        for (ka, va), (kb, vb) in zip(a, b):
            assert ka.shape == kb.shape == (2, len(g.prefix), 8)
            torch.testing.assert_close(ka, kb, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-4)
    # Each path continues from the other's entries.
    for packed in (True, False):
        store = stores[not packed]
        got = score_groups_prefix_cache(llama, later, ScorerConfig(packed=packed), store=store)
        assert max_diff(got, truth) <= 1e-4
        assert store.hits == len(first)


def test_bf16_matmuls_stay_close_and_keep_the_options_apart(llama):
    """bf16 mode: within 0.4 nats of float32 per token on this model (its log-probs spread over
    ~10 nats; both bf16 paths measured 0.16-0.26 here), not identical (the mode does something),
    and the options of a group keep their order."""
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import ScorerConfig, score_groups_prefix_cache

    groups = groups_for(4)
    exact = score_groups_prefix_cache(llama, groups)
    fast = score_groups_prefix_cache(llama, groups, ScorerConfig(matmul_dtype="bfloat16"))
    unpacked = score_groups_prefix_cache(llama, groups, ScorerConfig(matmul_dtype="bfloat16", packed=False))
    d = max_diff(fast, exact)
    assert 1e-3 < d <= 0.4
    assert max_diff(unpacked, exact) <= 0.4
    # Sums of the options of a group, where float32 tells them apart by more than the bf16
    # error, rank the same way.
    for ge, gf in zip(exact, fast):
        se, sf = [sum(o) for o in ge], [sum(o) for o in gf]
        for i in range(len(se)):
            for j in range(len(se)):
                if se[i] - se[j] > 2 * d * max(len(ge[i]), len(ge[j]), 1):
                    assert sf[i] > sf[j]


def test_chunked_head_equals_one_log_softmax(llama):
    from ra3_megatron.rollout.cpu_accel.prefix_scorer import _head_logprobs

    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(37, llama.config.hidden_size, generator=gen)
    targets = torch.randint(0, VOCAB, (37,), generator=gen)
    with torch.inference_mode():
        want = torch.log_softmax(llama.lm_head(hidden), -1)[torch.arange(37), targets]
        for chunk in (1, 8, 128):
            got = _head_logprobs(llama, hidden, targets, chunk)
            assert got.shape == (37,) and (got - want).abs().max().item() <= 1e-5


def test_packed_decoder_refuses_segments_that_do_not_split_the_tokens(llama):
    from ra3_megatron.rollout.cpu_accel.packed_llama import PackedDecoder, Segments

    dec = PackedDecoder(llama)
    ids = torch.arange(6)
    with pytest.raises(ValueError, match="do not split"), torch.inference_mode():
        dec.forward(ids, ids, Segments(lengths=[3, 2], contexts=[-1, -1]), [])
    with pytest.raises(ValueError, match="do not split"), torch.inference_mode():
        dec.forward(ids, ids, Segments(lengths=[6, 0], contexts=[-1, -1]), [])


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_per_head_and_batched_ways_agree(monkeypatch, with_bias):
    """`_RunKV.attend` picks batched or per-KV-head GEMMs by size: both must give the same
    softmax attention (the merge column's weight included) as a plain reference."""
    from ra3_megatron.rollout.cpu_accel import packed_llama
    from ra3_megatron.rollout.cpu_accel.onednn import onednn_available

    gen = torch.Generator().manual_seed(0)
    kvh, rows, n, d = 2, 12, 9, 8
    qs, keys, values = (torch.randn(*shape, generator=gen) for shape in ((kvh, rows, d), (kvh, n, d), (kvh, n, d)))
    bias = torch.randn(rows, n - 2, generator=gen) if with_bias else None
    last = torch.randn(kvh, rows, generator=gen)
    s = qs @ keys[:, : n - 2].transpose(1, 2) + (bias if with_bias else 0)
    s[..., -1] = last
    p = torch.softmax(s, -1)
    want = (p @ values[:, : n - 2], p[..., -1:])
    for per_head_from in (1 << 40, 0):  # never, always
        monkeypatch.setattr(packed_llama._RunKV, "PER_HEAD_MACS", per_head_from)
        run = packed_llama._RunKV(keys, values, onednn=onednn_available())
        got = run.attend(qs, n - 2, bias=bias, last=last)
        assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-6)
