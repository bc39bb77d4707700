"""`ra3 prepare` end to end on small inputs: exact round trip, dedup, split, workers, infused records, CLI errors."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict

import numpy as np
import pytest

from ra3_megatron.cli.main import main
from ra3_megatron.data.indexed import open_indexed
from ra3_megatron.data.prepare import PrepareConfig, prepare
from ra3_megatron.data.tokenizer import load_tokenizer
from ra3_megatron.models.tiny import stdlib_files

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20 stdlib files (tests excluded), one exact copy of one of them, and a file quoting the EOS text."""
    root = tmp_path_factory.mktemp("corpus")
    files = random.Random(1).sample(stdlib_files(), 20)
    for k, path in enumerate(files):
        shutil.copyfile(path, root / f"m{k:02d}_{path.name}")
    shutil.copyfile(files[0], root / "zz_copy.py")
    (root / "eos.py").write_text('MARK = "<|endoftext|>"\n')
    return root


def _snippets(prefix: str) -> list[dict]:
    with open(f"{prefix}.snippets.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_round_trip_and_summary(corpus, tok, tmp_path, tiny_tokenizer_dir):
    out = str(tmp_path / "d")
    summary = prepare(
        PrepareConfig(
            input=str(corpus),
            tokenizer=str(tiny_tokenizer_dir),
            output=out,
            max_tokens=256,
            dedup=False,
            write_snippets=True,
            progress=False,
        )
    )
    tokens, classes = open_indexed(out)
    records = _snippets(out)
    assert len(tokens) == len(classes) == len(records) == summary["snippets"]
    by_origin = defaultdict(str)
    for k, rec in enumerate(records):
        ids = tokens[k]
        assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]  # one EOS, at the end
        assert tok.decode(ids[:-1]) == rec["text"]  # exact round trip
        assert len(ids) - 1 <= 256
        assert not classes[k].any()
        by_origin[rec["origin"]] += rec["text"]
    assert by_origin == {p.name: p.read_bytes().decode("utf-8") for p in corpus.iterdir()}
    assert summary["files"] == 22 and summary["duplicates_dropped"] == 0
    assert summary["tokens"] == sum(len(tokens[k]) - 1 for k in range(len(tokens)))
    assert summary["tokens_with_eos"] == int(tokens.sequence_lengths.sum())
    assert summary["lines"] == sum(p.read_text().count("\n") for p in corpus.iterdir())
    assert summary["chunking"]["split_documents"] > 0 and summary["lines_per_s"] > 0
    assert json.loads((tmp_path / "d.summary.json").read_text()) == summary

    deduped = str(tmp_path / "dd")
    summary2 = prepare(
        PrepareConfig(
            input=str(corpus),
            tokenizer="tiny",
            output=deduped,
            max_tokens=256,
            write_snippets=True,
            progress=False,
        )
    )
    texts, kept = [r["text"] for r in records], [r["text"] for r in _snippets(deduped)]
    assert kept == list(dict.fromkeys(texts))  # first occurrences, in order
    copies = sum(r["origin"] == "zz_copy.py" for r in records)
    assert summary2["duplicates_dropped"] == len(texts) - len(kept) >= copies > 0
    assert not any(r["origin"] == "zz_copy.py" for r in _snippets(deduped))


def test_workers_give_identical_output(corpus, tmp_path):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare(
            PrepareConfig(
                input=str(corpus),
                tokenizer="tiny",
                output=str(out),
                max_tokens=200,
                workers=workers,
                batch_docs=4,
                progress=False,
            )
        )
        outs.append([(out.parent / f"{out.name}{s}").read_bytes() for s in (".bin", ".idx", "_classes.bin")])
    assert outs[0] == outs[1]


def test_holdout_splits_by_file(corpus, tmp_path):
    out = str(tmp_path / "h")
    summary = prepare(
        PrepareConfig(
            input=str(corpus),
            tokenizer="tiny",
            output=out,
            max_tokens=128,
            holdout=0.3,
            write_snippets=True,
            progress=False,
        )
    )
    records = _snippets(out)
    split_of = defaultdict(set)
    for rec in records:
        split_of[rec["origin"]].add(rec["split"])
    assert all(len(s) == 1 for s in split_of.values())  # a file never straddles the split
    assert {rec["split"] for rec in records} == {"train", "valid"}
    for name in ("train", "valid"):
        tokens, _ = open_indexed(f"{out}_{name}")
        assert len(tokens) == summary["splits"][name]["snippets"] == sum(r["split"] == name for r in records)


def test_infused_records_carry_latent_classes(tmp_path, tok):
    from ra3_megatron.core.latent import InfusedSnippet, Thought
    from ra3_megatron.core.token_classes import encode_with_classes

    snippets = [
        InfusedSnippet(
            "a.py#0",
            "import os\n\ndef walk(root):\n    for d in os.walk(root):\n        yield d\n",
            (Thought(2, "walk the tree"), Thought(4, "hand back each directory", 0.3)),
        ),
        InfusedSnippet("b.py#0", "x = 1\ny = 2\n", ()),
    ]
    path = tmp_path / "infused.jsonl"
    path.write_text("".join(json.dumps(s.to_record()) + "\n" for s in snippets))
    out = str(tmp_path / "i")
    summary = prepare(
        PrepareConfig(input=str(path), tokenizer="tiny", output=out, write_snippets=True, progress=False)
    )
    tokens, classes = open_indexed(out)
    assert summary["infused_records"] == 2 and summary["latent_tokens"] == int(classes[0].sum()) > 0
    for k, snip in enumerate(snippets):
        ids, cls = encode_with_classes(tok.backend, snip)
        assert list(tokens[k][:-1]) == ids and list(classes[k][:-1]) == cls
        assert tok.decode(tokens[k][:-1]) == snip.render()
    latent = [tok.decode([i]) for i, c in zip(tokens[0], classes[0]) if c]
    assert "".join(latent).replace(" ", "").replace("\n", "") == "#walkthetree#handbackeachdirectory"
    record = _snippets(out)[0]
    assert record["text"] == snippets[0].text and record["thoughts"][1]["gain"] == 0.3


def test_cli_bad_input_errors_and_skips(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a = 1\\n"}\n{"text": "b = \n')
    out = tmp_path / "o"
    assert (
        main(["prepare", "--input", str(bad), "--tokenizer", "tiny", "--output", str(out), "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert f"{bad}:2: invalid JSON" in err
    assert not list(tmp_path.glob("o*"))  # nothing half-written
    assert (
        main(
            [
                "prepare",
                "--input",
                str(bad),
                "--tokenizer",
                "tiny",
                "--output",
                str(out),
                "--no-progress",
                "--skip-bad-lines",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "bad-jsonl-line" in shown and "lines/s" in shown
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["skipped"]["by_reason"] == {"bad-jsonl-line": 1} and summary["snippets"] == 1
    assert (
        main(["prepare", "--input", str(tmp_path / "missing"), "--tokenizer", "tiny", "--output", str(out)])
        == 2
    )
    assert "no such file or directory" in capsys.readouterr().err
    assert (
        main(["prepare", "--input", str(bad), "--tokenizer", str(tmp_path / "nothere"), "--output", str(out)])
        == 2
    )
    assert "no such tokenizer" in capsys.readouterr().err


def test_eos_text_inside_code_is_not_the_eos_token(tmp_path, tok):
    (tmp_path / "e.py").write_text('MARK = "<|endoftext|>"\n')
    out = str(tmp_path / "e")
    prepare(PrepareConfig(input=str(tmp_path / "e.py"), tokenizer="tiny", output=out, progress=False))
    tokens, _ = open_indexed(out)
    assert (
        np.count_nonzero(tokens[0] == tok.eos_id) == 1
        and tok.decode(tokens[0][:-1]) == 'MARK = "<|endoftext|>"\n'
    )


def test_progress_bar_and_limit(corpus, tmp_path, capsys):
    summary = prepare(PrepareConfig(input=str(corpus), tokenizer="tiny", output=str(tmp_path / "p"), limit=3))
    err = capsys.readouterr().err
    assert "prepare: 100%" in err and "3/3" in err and "lines/s" in err  # tqdm, on stderr
    assert summary["files"] == 3
