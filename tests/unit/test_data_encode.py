"""encode_documents (what prepare's workers run) and tokenizer loading."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from ra3_megatron.core.latent import Thought
from ra3_megatron.data import encode as encode_mod
from ra3_megatron.data.doc import SourceDoc
from ra3_megatron.data.encode import encode_documents
from ra3_megatron.data.tokenizer import MegatronTokenizerAdapter, load_tokenizer
from ra3_megatron.errors import ConfigError, InputError
from ra3_megatron.models.tiny import stdlib_files

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def docs():
    files = random.Random(3).sample(stdlib_files(), 8)
    return [SourceDoc(p.name, p.read_text(encoding="utf-8"), p.name) for p in files]


@pytest.mark.parametrize("slack", [True, False])
def test_snippets_are_canonical_tokenizations_within_budget(tok, docs, monkeypatch, slack):
    refits = []
    original = encode_mod.refit
    monkeypatch.setattr(encode_mod, "refit", lambda *a, **k: refits.append(1) or original(*a, **k))
    if not slack:  # plan at the full budget: chunks that tokenize one over must be re-split by refit
        monkeypatch.setattr(encode_mod, "planning_budget", lambda n: n)
    result = encode_documents(docs, tok, max_tokens=128)
    assert result.documents == 8 and result.split_documents >= 6
    assert slack or refits  # without the slack, some chunk came out over budget and was re-split
    by_doc: dict[str, str] = {}
    for snip in result.snippets:
        assert list(snip.ids) == tok.encode(snip.text)  # the tokenizer's own ids for the snippet text
        assert 0 < len(snip.ids) <= 128 and snip.classes is None
        by_doc[snip.origin] = by_doc.get(snip.origin, "") + snip.text
    assert by_doc == {d.origin: d.text for d in docs}
    ids = [s.id for s in result.snippets]
    assert ids[0] == f"{docs[0].id}#0" and len(set(ids)) == len(ids)


def test_no_chunking_and_infused_records_stay_whole(tok, docs):
    whole = encode_documents(docs[:2], tok, max_tokens=0)
    assert [s.text for s in whole.snippets] == [d.text for d in docs[:2]]
    infused = SourceDoc("r#0", "a = 1\nb = 2\n" * 30, "r", (Thought(1, "then b"),))
    result = encode_documents([infused, docs[0]], tok, max_tokens=16)
    first = result.snippets[0]
    assert first.id == "r#0" and first.text.startswith("a = 1\n# then b\nb = 2\n")
    assert result.over_budget == 1 and result.infused == 1 and first.classes.sum() > 0
    assert first.record == {
        "id": "r#0",
        "text": infused.text,
        "thoughts": [{"line": 1, "text": "then b", "gain": None}],
    }
    assert all(s.origin == docs[0].origin for s in result.snippets[1:])


def test_load_tokenizer_by_name_dir_and_file(tiny_tokenizer_dir, tmp_path):
    by_name, by_dir = load_tokenizer("tiny"), load_tokenizer(str(tiny_tokenizer_dir))
    assert (by_name.eos_id, by_name.pad_id, by_name.vocab_size) == (
        by_dir.eos_id,
        by_dir.pad_id,
        by_dir.vocab_size,
    )
    assert by_dir.eos_id == by_dir.backend.token_to_id("<|endoftext|>") and by_dir.pad_id != by_dir.eos_id
    shutil.copyfile(tiny_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    bare = load_tokenizer(str(tmp_path / "tokenizer.json"))  # no tokenizer_config.json: the EOS is guessed
    assert bare.eos_id == by_dir.eos_id and bare.pad_id is None
    assert load_tokenizer(str(tmp_path / "tokenizer.json"), eos_token="<|pad|>").eos_id == by_dir.pad_id
    with pytest.raises(ConfigError, match="--eos-token"):
        load_tokenizer(str(tmp_path / "tokenizer.json"), eos_token="<nope>")
    with pytest.raises(InputError, match="no such tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(InputError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad.json"))
    text = "def f():\n    return 'é' + \"<|endoftext|>\"\n"
    assert by_dir.decode(by_dir.encode(text)) == text and by_dir.eos_id not in by_dir.encode(text)


def test_megatron_adapter_has_what_gpt_dataset_reads(tok):
    adapter = MegatronTokenizerAdapter(tok)
    assert (adapter.eod, adapter.pad, adapter.vocab_size) == (tok.eos_id, tok.pad_id, tok.vocab_size)
    assert json.dumps(adapter.unique_identifiers)  # hashed into Megatron's cache key
    assert adapter.detokenize(adapter.tokenize("x = 1\n")) == "x = 1\n"
