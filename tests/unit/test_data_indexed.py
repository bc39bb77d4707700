"""IndexedWriter: Megatron's IndexedDataset reads what it writes; classes aligned; crash-safe."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ra3_megatron.data.indexed import IndexedWriter, open_indexed

pytestmark = pytest.mark.unit


def test_round_trip_through_megatron_indexed_dataset(tmp_path):
    prefix = tmp_path / "sub" / "d"
    docs = [([5, 6, 7], [0, 1, 1]), ([9], None), (list(range(100, 140)), [1] * 40)]
    with IndexedWriter(prefix, vocab_size=1000, eos_id=3) as w:
        for ids, classes in docs:
            w.add_document(ids, classes)
    assert (w.documents, w.tokens) == (3, 3 + 1 + 40 + 3)
    tokens, classes = open_indexed(prefix)
    assert tokens.index.dtype == np.uint16 and classes.index.dtype == np.uint8
    assert len(tokens) == len(classes) == 3
    assert list(tokens.document_indices) == [0, 1, 2, 3]
    for k, (ids, cls) in enumerate(docs):
        assert list(tokens[k]) == [*ids, 3]  # EOS appended
        assert list(classes[k]) == [*(cls or [0] * len(ids)), 0]  # EOS is code
    assert sorted(p.name for p in prefix.parent.iterdir()) == [
        "d.bin",
        "d.idx",
        "d_classes.bin",
        "d_classes.idx",
    ]


def test_large_vocab_uses_int32_and_no_eos(tmp_path):
    with IndexedWriter(tmp_path / "d", vocab_size=70_000) as w:
        w.add_document([69_999, 0])
    tokens, classes = open_indexed(tmp_path / "d")
    assert tokens.index.dtype == np.int32 and list(tokens[0]) == [69_999, 0] and list(classes[0]) == [0, 0]


def test_bad_documents_are_rejected(tmp_path):
    with IndexedWriter(tmp_path / "d", vocab_size=10, eos_id=0) as w:
        for ids, classes in [([], None), ([10], None), ([-1], None), ([1, 2], [0]), ([1], [2])]:
            with pytest.raises(ValueError):
                w.add_document(ids, classes)
        w.add_document([1], [1])
    with pytest.raises(ValueError):
        IndexedWriter(tmp_path / "e", vocab_size=10, eos_id=10)


def test_a_crash_leaves_no_dataset_and_keeps_the_previous_one(tmp_path):
    prefix = tmp_path / "d"
    with pytest.raises(RuntimeError):
        with IndexedWriter(prefix, vocab_size=50) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with IndexedWriter(prefix, vocab_size=50) as w:
        w.add_document([4])
    with pytest.raises(RuntimeError):
        with IndexedWriter(prefix, vocab_size=50) as w:
            w.add_document([7, 7])
            raise RuntimeError("killed")
    tokens, _ = open_indexed(prefix)
    assert [list(tokens[0])] == [[4]] and len(list(tmp_path.iterdir())) == 4


def test_temporaries_of_a_killed_writer_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    for suffix in (".bin", "_classes.bin", ".idx"):
        (tmp_path / f"d.tmp-{pid}{suffix}").write_bytes(b"half")
    (tmp_path / f"d.tmp-{os.getpid()}x.bin").write_bytes(b"not a pid")
    with IndexedWriter(tmp_path / "d", vocab_size=50) as w:
        w.add_document([1])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["d.bin", "d.idx", "d_classes.bin", "d_classes.idx", f"d.tmp-{os.getpid()}x.bin"])
