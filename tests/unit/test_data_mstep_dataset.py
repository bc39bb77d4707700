"""LatentGPTDataset: a real megatron.core GPTDataset whose samples carry the class of each label token."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ra3_megatron.data.prepare import PrepareConfig, prepare
from ra3_megatron.errors import InputError
from ra3_megatron.models.tiny import stdlib_files

pytestmark = pytest.mark.unit

MARK = "qqzv"  # a word no stdlib file contains: every token of it must be latent


@pytest.fixture(scope="module")
def infused(tmp_path_factory, tiny_tokenizer_dir):
    """E-step-like records over stdlib snippets (thoughts on ~1/3 of the safe lines) + plain code."""
    from ra3_megatron.core.latent import InfusedSnippet, Thought, safe_candidate_lines
    from ra3_megatron.data.chunking import chunk_snippets
    from ra3_megatron.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tiny_tokenizer_dir))
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("mstep")
    records = []
    for path in rng.sample(stdlib_files(), 6):
        text = path.read_text(encoding="utf-8")
        assert MARK not in text
        for k, chunk in enumerate(chunk_snippets(text, tokenizer=tok.backend, max_tokens=300)):
            lines = [t for t in safe_candidate_lines(chunk) if rng.random() < 0.3]
            thoughts = tuple(
                Thought(t, f"{MARK} {rng.choice(['check', 'loop', 'return'])} {t}") for t in lines
            )
            records.append(InfusedSnippet(f"{path.name}#{k}", chunk, thoughts).to_record())
    (root / "infused.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prefix = str(root / "data")
    summary = prepare(
        PrepareConfig(
            input=str(root / "infused.jsonl"),
            tokenizer=str(tiny_tokenizer_dir),
            output=prefix,
            holdout=0.2,
            progress=False,
        )
    )
    assert summary["latent_tokens"] > 0 and summary["splits"]["valid"]["snippets"] > 0
    return {"prefix": prefix, "tok": tok, "records": records}


def test_samples_are_gpt_samples_with_aligned_token_classes(infused, tiny_tokenizer_dir):
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from ra3_megatron.core.latent import InfusedSnippet
    from ra3_megatron.data.mstep_dataset import LatentGPTDataset, build_mstep_datasets

    tok = infused["tok"]
    train, valid, test = build_mstep_datasets(
        f"{infused['prefix']}_train",
        seq_length=64,
        tokenizer_dir=tiny_tokenizer_dir,
        train_samples=None,
        valid_samples=None,
        seed=7,
    )
    assert isinstance(train, LatentGPTDataset) and isinstance(train, GPTDataset)
    assert valid is None and test is None  # split "100,0,0"
    thought_lines = "\n".join(f"# {t['text']}" for r in infused["records"] for t in r["thoughts"])
    mark_ids = tok.encode(f" {MARK}")
    latent_labels = marked = 0
    for i in range(len(train)):
        s = train[i]
        assert set(s) == {"tokens", "labels", "loss_mask", "position_ids", "attention_mask", "token_classes"}
        assert s["token_classes"].dtype == torch.int64 and s["token_classes"].shape == s["labels"].shape
        assert torch.equal(s["labels"][:-1], s["tokens"][1:])
        labels, classes = s["labels"].tolist(), s["token_classes"].tolist()
        for j in range(len(labels) - len(mark_ids) + 1):
            if labels[j : j + len(mark_ids)] == mark_ids:  # the marker word: only ever inside a thought
                marked += 1
                assert classes[j : j + len(mark_ids)] == [1] * len(mark_ids)
        for label, cls in zip(labels, classes):
            piece = tok.decode([label])
            if cls == 1:
                latent_labels += 1
                assert piece.strip() in thought_lines, piece  # a piece of some `# thought` line
    assert marked > 20 and latent_labels > marked * len(mark_ids)
    # the samples cover the documents: the labels of the samples in sample-index order (undoing the
    # shuffle) are the token stream; cut at EOS, its pieces are whole rendered snippets
    order = sorted(range(len(train)), key=lambda i: int(train.shuffle_index[i]))
    stream = [t for i in order for t in train[i]["labels"].tolist()]
    eos = tok.eos_id
    pieces = tok.decode(stream).split(tok.backend.id_to_token(eos))[1:-1]  # drop the partial ends
    rendered = {InfusedSnippet.from_record(r).render() for r in infused["records"]}
    assert pieces and all(p in rendered for p in pieces)
    assert len(set(pieces)) >= 0.7 * train.indices.size
    padding = train[None]
    assert not padding["loss_mask"].any() and padding["token_classes"].shape == (64,)


def test_holdout_prefixes_and_blends(infused, tiny_tokenizer_dir):
    from megatron.core.datasets.blended_dataset import BlendedDataset

    from ra3_megatron.data.mstep_dataset import build_mstep_datasets

    prefix = infused["prefix"]
    train, valid, _ = build_mstep_datasets(
        f"{prefix}_train",
        valid_prefix=f"{prefix}_valid",
        seq_length=32,
        tokenizer_dir=tiny_tokenizer_dir,
        train_samples=50,
        valid_samples=5,
        seed=1,
    )
    assert len(train) >= 50 and len(valid) >= 5 and "token_classes" in valid[0]
    blend = build_mstep_datasets(
        ["0.5", f"{prefix}_train", "0.5", f"{prefix}_valid"],
        seq_length=32,
        tokenizer_dir=tiny_tokenizer_dir,
        train_samples=40,
        valid_samples=0,
        seed=1,
        split="90,10,0",
    )
    assert isinstance(blend[0], BlendedDataset) and len(blend[0]) == 40 and "token_classes" in blend[0][3]


def test_missing_or_mismatched_classes_are_input_errors(tmp_path, tiny_tokenizer_dir):
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from ra3_megatron.data.indexed import IndexedWriter
    from ra3_megatron.data.mstep_dataset import build_mstep_datasets

    builder = IndexedDatasetBuilder(str(tmp_path / "plain.bin"), dtype=np.uint16)
    builder.add_document(np.arange(2, 300), [298])
    builder.finalize(str(tmp_path / "plain.idx"))
    kw = dict(seq_length=16, tokenizer_dir=tiny_tokenizer_dir, train_samples=4, valid_samples=0, seed=1)
    with pytest.raises(InputError, match="token classes are missing"):
        build_mstep_datasets(str(tmp_path / "plain"), **kw)
    with IndexedWriter(tmp_path / "other", vocab_size=8192) as w:
        w.add_document(np.arange(2, 100))
    for suffix in (".bin", ".idx"):
        (tmp_path / f"plain_classes{suffix}").write_bytes((tmp_path / f"other_classes{suffix}").read_bytes())
    with pytest.raises(InputError, match="document lengths differ"):
        build_mstep_datasets(str(tmp_path / "plain"), **kw)
    with pytest.raises(InputError, match="no indexed dataset"):
        build_mstep_datasets(str(tmp_path / "nothing"), **kw)
