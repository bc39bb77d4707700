"""Readers: every input kind, deterministic order, and the bad-input list (each with its exact behaviour)."""

from __future__ import annotations

import json

import pytest

from ra3_megatron.core.latent import Thought
from ra3_megatron.data.chunking import plan_chunks
from ra3_megatron.data.readers import SkipReport, SourceDoc, count_documents, iter_documents
from ra3_megatron.errors import InputError

pytestmark = pytest.mark.unit


def _read(path, **kw) -> tuple[list[SourceDoc], SkipReport]:
    report = SkipReport()
    return list(iter_documents(path, report=report, **kw)), report


def _write(path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


# --- the bad-input list -------------------------------------------------------------------


def test_non_utf8_file_is_a_counted_skip_naming_file_and_line(tmp_path):
    _write(tmp_path / "a.py", "x = 1\n")
    _write(tmp_path / "latin.py", b"# ok\ns = 'caf\xe9'\n")
    docs, report = _read(tmp_path)
    assert [d.id for d in docs] == ["a.py"]
    assert report.counts == {"non-utf8": 1}
    assert report.examples["non-utf8"] == [f"{tmp_path / 'latin.py'}:2: byte 0xe9 is not UTF-8"]


def test_empty_and_whitespace_files_are_counted_skips(tmp_path):
    _write(tmp_path / "empty.py", "")
    _write(tmp_path / "blank.py", " \n\t\n")
    _write(tmp_path / "real.py", "pass\n")
    docs, report = _read(tmp_path)
    assert [d.id for d in docs] == ["real.py"]
    assert report.counts == {"empty": 2}
    assert sorted(report.examples["empty"]) == sorted(
        [str(tmp_path / "empty.py"), str(tmp_path / "blank.py")]
    )


def test_ten_megabyte_one_line_file_is_a_counted_skip(tmp_path):
    _write(tmp_path / "big.py", "x = '" + "a" * (10 * 2**20) + "'\n")
    _write(tmp_path / "ok.py", "y = 2\n")
    docs, report = _read(tmp_path)
    assert [d.id for d in docs] == ["ok.py"]
    assert report.counts == {"line-too-long": 1}
    assert report.examples["line-too-long"][0].startswith(f"{tmp_path / 'big.py'}:1: 10,485,766 characters")


def test_syntax_error_file_is_read_and_only_disables_ast_chunking(tmp_path):
    text = "def f(:\n    return 1\n\n\nclass C\n    pass\n\n\nx = 1\n"
    _write(tmp_path / "broken.py", text)
    docs, report = _read(tmp_path)
    assert [d.text for d in docs] == [text] and report.total == 0
    plan = plan_chunks(text, lambda a, b: b - a, 25)  # cost = characters
    assert plan.parsed is False
    assert "".join(plan.chunks) == text
    assert plan.chunks[1].startswith("class C")  # cut at the blank-line boundary


def test_truncated_jsonl_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    _write(path, '{"text": "a = 1\\n"}\n{"text": "b = 2\\n"}\n{"text": "c = ')
    with pytest.raises(InputError) as info:
        _read(path)
    assert info.value.path == str(path) and info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: invalid JSON")
    assert "--skip-bad-lines" in str(info.value)


def test_truncated_jsonl_line_is_counted_with_skip_bad_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    _write(path, '{"text": "a = 1\\n"}\n{"text": "c = \n{"content": "b = 2\\n"}\n')
    docs, report = _read(path, on_error="skip")
    assert [d.text for d in docs] == ["a = 1\n", "b = 2\n"]
    assert report.counts == {"bad-jsonl-line": 1}
    assert report.examples["bad-jsonl-line"][0].startswith(f"{path}:2: invalid JSON")


def test_missing_path_is_an_input_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="no such file or directory") as info:
        _read(missing)
    assert info.value.path == str(missing)


# --- input kinds ---------------------------------------------------------------------------


def test_directory_is_recursive_sorted_exact_and_excludes(tmp_path):
    files = {
        "b.py": "b = 1\r\n",
        "a/z.py": "\ufeffz = 1\n",
        "a/b/c.py": "c = 1",
        "a/test/t.py": "t = 1\n",
        ".hidden/h.py": "h = 1\n",
        "__pycache__/p.py": "p = 1\n",
        "notes.txt": "not code\n",
    }
    for name, text in files.items():
        _write(tmp_path / name, text)
    docs, _ = _read(tmp_path, exclude=("test",))
    assert [d.id for d in docs] == ["a/b/c.py", "a/z.py", "b.py"]
    assert [d.origin for d in docs] == [d.id for d in docs]
    assert [d.text for d in docs] == ["c = 1", "\ufeffz = 1\n", "b = 1\r\n"]  # CRLF and BOM byte-exact
    assert count_documents(tmp_path, ("test",)) == 3
    assert [d.id for d in _read(tmp_path)[0]] == ["a/b/c.py", "a/test/t.py", "a/z.py", "b.py"]


def test_unreadable_and_too_large_files_are_counted_skips(tmp_path):
    _write(tmp_path / "ok.py", "a = 1\n")
    _write(tmp_path / "big.py", "b = 1\n" * 100)
    (tmp_path / "dangling.py").symlink_to(tmp_path / "gone.py")
    docs, report = _read(tmp_path, max_file_bytes=100)
    assert [d.id for d in docs] == ["ok.py"]
    assert report.counts == {"unreadable": 1, "file-too-large": 1}
    assert report.examples["unreadable"][0].startswith(str(tmp_path / "dangling.py"))


def test_single_py_file_and_unsupported_suffix(tmp_path):
    _write(tmp_path / "m.py", "m = 1\n")
    assert _read(tmp_path / "m.py")[0] == [SourceDoc("m.py", "m = 1\n", "m.py")]
    _write(tmp_path / "m.txt", "m = 1\n")
    with pytest.raises(InputError, match="unsupported input"):
        _read(tmp_path / "m.txt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="no .py files"):
        _read(tmp_path / "emptydir")


def test_jsonl_fields_ids_origins_and_thoughts(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [
        {"content": "a = 1\n"},
        {"id": "pkg/m.py#3", "code": "b = 2\n"},
        {"id": 7, "text": "c = 3\n", "path": "x.py"},
        {"id": "s#0", "text": "x = 1\ny = 2\n", "thoughts": [{"line": 1, "text": "then y", "gain": 0.5}]},
    ]
    _write(path, "\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs, report = _read(path)
    assert [(d.id, d.origin) for d in docs] == [
        ("r.jsonl:1", "r.jsonl:1"),
        ("pkg/m.py#3", "pkg/m.py"),
        ("7", "x.py"),
        ("s#0", "s"),
    ]
    assert [d.thoughts for d in docs[:3]] == [None, None, None]
    assert docs[3].thoughts == (Thought(1, "then y", 0.5),)
    only_code = _read(path, text_field="code", on_error="skip")
    assert [d.text for d in only_code[0]] == ["b = 2\n"] and only_code[1].counts == {"bad-record": 3}


def test_bad_records_are_errors_or_counted(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(
        path,
        '{"text": "ok = 1\\n"}\n[1, 2]\n{"body": "x"}\n{"text": 5}\n'
        '{"id": "t", "text": "a\\n", "thoughts": [{"line": 9, "text": "no such line"}]}\n{"text": null}\n',
    )
    with pytest.raises(InputError, match="expected a JSON object") as info:
        _read(path)
    assert info.value.line == 2
    docs, report = _read(path, on_error="skip")
    assert [d.text for d in docs] == ["ok = 1\n"]
    assert report.counts == {"bad-record": 4, "empty": 1}
    assert any("no text field" in e for e in report.examples["bad-record"])


def test_parquet_and_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"content": ["a = 1\n", "", "b = 2\n"], "id": ["x.py", "e.py", "y.py"]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    docs, report = _read(tmp_path / "d.parquet")
    assert [(d.id, d.text) for d in docs] == [("x.py", "a = 1\n"), ("y.py", "b = 2\n")]
    assert report.counts == {"empty": 1}
    datasets.DatasetDict({"train": ds, "extra": ds.select([2])}).save_to_disk(str(tmp_path / "hf"))
    docs, _ = _read(tmp_path / "hf")
    assert [d.text for d in docs] == ["a = 1\n", "b = 2\n", "b = 2\n"]
    nofield = datasets.Dataset.from_dict({"body": ["x"]})
    nofield.save_to_disk(str(tmp_path / "hf2"))
    with pytest.raises(InputError, match="row 0: no text field"):
        _read(tmp_path / "hf2")


def test_manifest_directory_reads_shards_in_manifest_order(tmp_path):
    out = tmp_path / "estep"
    _write(
        out / "part-r000-00001.jsonl", json.dumps({"id": "f.py#1", "text": "b = 2\n", "thoughts": []}) + "\n"
    )
    _write(
        out / "part-r000-00000.jsonl", json.dumps({"id": "f.py#0", "text": "a = 1\n", "thoughts": []}) + "\n"
    )
    _write(out / "stray.py", "ignored = True\n")
    manifest = {
        "shards": [{"path": "part-r000-00001.jsonl", "records": 1}, {"path": "part-r000-00000.jsonl"}]
    }
    _write(out / "manifest.json", json.dumps(manifest))
    docs, _ = _read(out)
    assert [d.id for d in docs] == ["f.py#1", "f.py#0"] and {d.origin for d in docs} == {"f.py"}
    assert all(d.thoughts == () for d in docs)
    _write(out / "manifest.json", json.dumps({"shards": ["gone.jsonl"]}))
    with pytest.raises(InputError, match="gone.jsonl"):
        _read(out)
