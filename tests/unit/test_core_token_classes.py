"""Token classes (code vs latent) from tokenizer offsets, with synthetic offsets and real tokenizers."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import pytest

from ra3_megatron.core.latent import InfusedSnippet, Thought
from ra3_megatron.core.token_classes import CODE, LATENT, encode_with_classes, token_classes

pytestmark = pytest.mark.unit

SNIPPET = InfusedSnippet(
    "s",
    "import os\r\n\r\ndef walk(root):\r\n    for d, _, files in os.walk(root):\r\n\tyield d, files\r\n    return None",
    (Thought(3, "list every directory"), Thought(4, "hand back each dir"), Thought(5, "nothing to return")),
)


def test_majority_rule_ties_go_to_latent_and_empty_tokens_are_code():
    spans = [(10, 20)]
    offsets = [(0, 10), (8, 12), (9, 12), (10, 11), (19, 21), (19, 22), (0, 0), (15, 15), (20, 30)]
    assert token_classes(offsets, spans) == [CODE, LATENT, LATENT, LATENT, LATENT, CODE, CODE, CODE, CODE]


def test_spans_may_be_unsorted_overlapping_or_empty():
    offsets = [(0, 4), (4, 8), (8, 12)]
    assert token_classes(offsets, [(9, 12), (3, 6), (5, 7), (2, 2)]) == [CODE, LATENT, LATENT]
    assert token_classes(offsets, []) == [CODE, CODE, CODE]
    assert token_classes([], [(0, 5)]) == []


def test_matches_a_character_set_reference_on_random_offsets():
    rng = random.Random(0)
    for _ in range(300):
        spans = []
        for _ in range(rng.randint(0, 4)):
            a = rng.randint(0, 60)
            spans.append((a, a + rng.randint(0, 8)))
        latent_chars = {i for a, b in spans for i in range(a, b)}
        offsets = []
        for _ in range(rng.randint(0, 30)):
            a = rng.randint(0, 70)
            offsets.append((a, a + rng.randint(0, 6)))  # unsorted, overlapping, some empty
        expected = [
            LATENT if b > a and 2 * len(latent_chars & set(range(a, b))) >= b - a else CODE
            for a, b in offsets
        ]
        assert token_classes(offsets, spans) == expected


def _check_alignment(text, spans, ids, classes, offsets, decode):
    assert len(ids) == len(classes) == len(offsets)
    assert decode(ids) == text
    latent_chars = {i for a, b in spans for i in range(a, b)}
    for (a, b), cls in zip(offsets, classes):
        inside = set(range(a, b)) & latent_chars
        if b > a and inside == set(range(a, b)):
            assert cls == LATENT, text[a:b]
        if not inside:
            assert cls == CODE, text[a:b]
    for a, _ in spans:  # the marker "#" of each thought is latent
        hash_pos = text.index("#", a)
        token = next(i for i, (s, e) in enumerate(offsets) if s <= hash_pos < e)
        assert classes[token] == LATENT, repr(text[offsets[token][0] : offsets[token][1]])
    assert CODE in classes and LATENT in classes


def test_with_the_tiny_hf_fast_tokenizer(tiny_tokenizer):
    ids, classes = encode_with_classes(tiny_tokenizer, SNIPPET)
    text, spans = SNIPPET.render_with_spans()
    offsets = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    _check_alignment(text, spans, ids, classes, offsets, tiny_tokenizer.decode)
    plain_ids, plain_classes = encode_with_classes(tiny_tokenizer, InfusedSnippet("p", SNIPPET.text))
    assert set(plain_classes) == {CODE} and tiny_tokenizer.decode(plain_ids) == SNIPPET.text


def test_with_a_tokenizers_bpe_trained_in_test():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = [
        (stdlib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "bisect.py", "shlex.py")
    ]
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    assert not callable(tok)  # exercises the `tokenizers.Tokenizer.encode` branch
    ids, classes = encode_with_classes(tok, SNIPPET)
    text, spans = SNIPPET.render_with_spans()
    offsets = tok.encode(text, add_special_tokens=False).offsets
    _check_alignment(text, spans, ids, classes, offsets, tok.decode)


def test_mismatched_tokenizer_output_is_refused():
    def broken(text, **kwargs):
        return {"input_ids": [1, 2, 3], "offset_mapping": [(0, 1)]}

    with pytest.raises(ValueError, match="3 ids but 1 offsets"):
        encode_with_classes(broken, SNIPPET)
