"""The transformers backends' shared contract: `hf` (the reference, transformers' public API) and
`hf-cpu` (the same with the CPU accelerator) each pass these; the reference's scores against
each sequence alone, its probes and chains against its scores, its samples against transformers'
own `generate`."""

from __future__ import annotations

import pytest
from rollout_helpers import max_diff, one_by_one, random_groups, same_samples

from ra3_megatron.errors import InputError
from ra3_megatron.rollout import SamplingConfig, ScoreGroup, ScoreOption, create_engine

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")

BACKENDS = ("hf", "hf-cpu")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def hf(backend, tiny_model_dir):
    return create_engine(backend, model=str(tiny_model_dir))


def test_reference_scores_each_sequence_as_alone(sharp_model):
    """The reference's padded batches against each option's sequence run alone, on a model sharp
    enough for errors to show; a target with no context before it is refused."""
    import statistics

    from ra3_megatron.rollout.hf_engine import score_padded

    groups = random_groups(0, sharp_model.config.vocab_size)[:-2] + random_groups(0, sharp_model.config.vocab_size)[-1:]
    truth = one_by_one(sharp_model, groups)
    with torch.inference_mode():
        got = score_padded(sharp_model, groups, rows=3)
    assert statistics.pstdev([x for g in truth for o in g for x in o]) > 0.5
    assert max_diff(got, truth) <= 1e-4


def test_a_target_without_context_is_refused(hf):
    with pytest.raises(ValueError, match="no context"):
        hf.score_groups([ScoreGroup(prefix=(), options=(ScoreOption(middle=(), target=(5,)),))])


def test_probes_outside_the_sequence_are_refused(hf):
    ids = [5, 6, 7, 8]
    assert hf.token_logprobs_at(ids, [], []) == []
    for positions in ([0], [5]):
        with pytest.raises(ValueError, match="outside"):
            hf.token_logprobs_at(ids, positions, [3])


def test_probes_and_chains_equal_scores(hf):
    """The E-step's decision probes and `<act>` chain read the same log-probs as score_groups."""
    ids = hf.tokenizer.encode("import os\nimport sys\n\ndef main():\n    return 1\n", add_special_tokens=False)
    positions, tokens = [3, len(ids) - 2, len(ids)], [ids[3], 7, 9]
    lp = hf.token_logprobs_at(ids, positions, tokens)
    for p, t, x in zip(positions, tokens, lp):
        ref = hf.score_groups([ScoreGroup(prefix=tuple(ids[:p]), options=(ScoreOption((), (t,)),))])[0][0][0]
        assert x == pytest.approx(ref, abs=1e-4)
    for start in (1, 5, len(ids) - 1):
        chain = hf.sequence_logprobs(ids, start)
        ref = hf.score_groups([ScoreGroup(prefix=tuple(ids[:start]), options=(ScoreOption((), tuple(ids[start:])),))])
        assert chain == pytest.approx(ref[0][0], abs=1e-4) and len(chain) == len(ids) - start


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


def test_load_weights_changes_scores_to_the_new_model(backend, tiny_model_dir, tmp_path):
    from ra3_megatron.models.tiny import tiny_model_dir as build

    eng = create_engine(backend, model=str(tiny_model_dir))
    new_dir = build(seed=1)
    groups = random_groups(2, eng.model.config.vocab_size)
    before = eng.score_groups(groups)
    eng.load_weights(str(new_dir))
    after = eng.score_groups(groups)
    assert max_diff(after, create_engine(backend, model=str(new_dir)).score_groups(groups)) <= 1e-5
    assert max_diff(after, before) > 1e-2
    assert len(eng.reload_seconds) == 1 and eng.reload_seconds[0] < 30
    with pytest.raises(InputError, match="safetensors"):
        eng.load_weights(str(tmp_path))


def test_inverse_cdf_sampling_follows_the_distribution():
    """The decode loop's sampler: frequencies over 40k draws match softmax(logits / T), top-p
    keeps exactly the smallest set reaching p, and a zero-probability token never comes out."""
    from ra3_megatron.rollout.hf_engine import sample_rows

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5]]).expand(40000, -1)
    gen = torch.Generator().manual_seed(0)
    for cfg, want in (
        (SamplingConfig(temperature=1.0), torch.softmax(logits[0], -1)),
        (SamplingConfig(temperature=2.0), torch.softmax(logits[0] / 2, -1)),
    ):
        freq = torch.bincount(sample_rows(logits, cfg, [gen], [0] * len(logits)), minlength=6).double() / 40000
        assert torch.allclose(freq, want.double(), atol=0.01), (freq, want)
        assert freq[4] == 0
    p = torch.softmax(logits[0], -1)  # top-p 0.8 keeps 0, 1 (0.56 + 0.21 < 0.8) and 5 (+ 0.13 reaches it)
    freq = torch.bincount(sample_rows(logits, SamplingConfig(top_p=0.8), [gen], [0] * len(logits)), minlength=6).double()
    kept = torch.tensor([0, 1, 5])
    assert freq[[2, 3, 4]].sum() == 0
    assert torch.allclose(freq[kept] / 40000, (p[kept] / p[kept].sum()).double(), atol=0.01)
