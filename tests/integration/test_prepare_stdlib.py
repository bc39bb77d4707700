"""`ra3 prepare` over the whole CPython standard library: an exact round trip that megatron.core's GPTDataset reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

import pytest

from ra3_megatron.data.indexed import open_indexed
from ra3_megatron.data.readers import python_files
from ra3_megatron.data.tokenizer import load_tokenizer

pytestmark = pytest.mark.integration

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _prepare(*args: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "ra3_megatron.cli.main", "prepare", "--no-progress", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


def _check_round_trip(prefix: str, tok, files: list[Path], summary: dict) -> None:
    tokens, classes = open_indexed(prefix)
    with open(f"{prefix}.snippets.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    assert len(tokens) == len(classes) == len(records) == summary["snippets"]
    by_origin: dict[str, list[str]] = defaultdict(list)
    for k, rec in enumerate(records):
        ids = tokens[k]
        assert ids[-1] == tok.eos_id
        assert tok.decode(ids[:-1]) == rec["text"], rec["id"]
        by_origin[rec["origin"]].append(rec["text"])
    read = 0
    for path in files:
        data = path.read_bytes()
        name = path.relative_to(STDLIB).as_posix()
        if name in by_origin:
            read += 1
            assert "".join(by_origin[name]) == data.decode("utf-8"), name
    assert read == summary["files"] and read + summary["skipped"]["total"] == len(files)


@pytest.mark.slow
def test_whole_stdlib_round_trip_and_gpt_dataset(tmp_path, tiny_tokenizer_dir):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from ra3_megatron.data.mstep_dataset import build_mstep_datasets, mstep_dataset_config
    from ra3_megatron.data.tokenizer import MegatronTokenizerAdapter

    prefix = str(tmp_path / "stdlib")
    _prepare(
        "--input",
        str(STDLIB),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--output",
        prefix,
        "--no-dedup",
        "--write-snippets",
        "--workers",
        "2",
    )
    summary = json.loads(Path(f"{prefix}.summary.json").read_text())
    files = python_files(STDLIB)  # what the reader walks: tests included, site-packages excluded
    assert len(files) > 1500
    assert summary["skipped"]["by_reason"].get("non-utf8", 0) >= 1  # stdlib test fixtures in latin-1
    tok = load_tokenizer(str(tiny_tokenizer_dir))
    _check_round_trip(prefix, tok, files, summary)

    # megatron.core's own GPTDataset reads it, through its own builder
    adapter = MegatronTokenizerAdapter(tok)
    config = mstep_dataset_config(
        ([prefix], None),
        seq_length=512,
        tokenizer=adapter,
        seed=3,
        split="99,1,0",
        path_to_cache=str(tmp_path / "cache"),
        create_attention_mask=False,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [200, 20, 0], lambda: True, config).build()
    assert type(train) is GPTDataset and len(train) >= 200 and len(valid) >= 20
    sample = train[5]
    assert sample["tokens"].shape == (512,) and int(sample["tokens"].max()) < tok.vocab_size
    # and so does the M-step dataset, with the classes alongside (all code here)
    mtrain, _, _ = build_mstep_datasets(
        prefix,
        seq_length=512,
        tokenizer_dir=tiny_tokenizer_dir,
        train_samples=200,
        valid_samples=20,
        seed=3,
        split="99,1,0",
        path_to_cache=str(tmp_path / "cache"),
    )
    assert not mtrain[5]["token_classes"].any() and mtrain[5]["tokens"].equal(sample["tokens"])


def test_smollm2_tokenizer_round_trip_on_a_stdlib_sample(tmp_path):
    from ra3_megatron.errors import ConfigError

    try:
        tok = load_tokenizer("smollm2")
    except ConfigError as exc:
        pytest.skip(str(exc))
    pkg = STDLIB / "json"
    prefix = str(tmp_path / "json")
    _prepare(
        "--input",
        str(pkg),
        "--tokenizer",
        "smollm2",
        "--output",
        prefix,
        "--max-tokens",
        "512",
        "--no-dedup",
        "--write-snippets",
    )
    summary = json.loads(Path(f"{prefix}.summary.json").read_text())
    files = [p for p in python_files(pkg)]
    tokens, _ = open_indexed(prefix)
    assert (
        tokens.index.dtype.__name__ == "uint16"
        and max(int(tokens[k].max()) for k in range(len(tokens))) < 49_152
    )
    assert summary["chunking"]["split_documents"] >= 1
    with open(f"{prefix}.snippets.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    for k, rec in enumerate(records):
        assert tok.decode(tokens[k][:-1]) == rec["text"] and len(tokens[k]) - 1 <= 512
    joined = defaultdict(str)
    for rec in records:
        joined[rec["origin"]] += rec["text"]
    assert joined == {p.relative_to(pkg).as_posix(): p.read_text(encoding="utf-8") for p in files}
