"""Record inputs (jsonl, parquet, saved HF datasets, E-step shards) -> `SourceDoc`s.

A record's text is its `text`, `content` or `code` field (`text_field="auto"`: the first that is
present) or the named field. `id` is the record's `id` (else `FILE:LINE` / `SPLIT/ROW`). `origin`
(what the held-out split groups by) is the record's `origin` or `path` field, else the part of
the id before the last `#` (the snippet ids `ra3 prepare` writes are `ORIGIN#K`), else the id.
A record with a `thoughts` list is an infused E-step record; its thoughts are validated.

E-step output directory: `manifest.json` is `{"shards": [...]}` or a plain list; each entry is a
shard path relative to the directory, or an object with a `path` (or `file`) key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ra3_megatron.data.doc import SourceDoc, check_text
from ra3_megatron.data.skips import BAD_JSONL_LINE, BAD_RECORD, SkipReport
from ra3_megatron.errors import InputError

TEXT_FIELDS = ("text", "content", "code")


def kind_of_dir(path: Path) -> str:
    """"manifest" (E-step jsonl shards), "hf" (save_to_disk output) or "code" (a tree of .py files)."""
    if (path / "manifest.json").is_file():
        return "manifest"
    if (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    ):
        return "hf"
    return "code"


def manifest_shards(directory: Path) -> list[tuple[Path, str]]:
    """(shard path, display name) in manifest order; InputError on a bad manifest or missing shard."""
    manifest = directory / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(manifest, f"not valid JSON: {exc}") from None
    entries = data.get("shards") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise InputError(manifest, "expected {\"shards\": [...]} or a list of shard paths")
    shards = []
    for k, entry in enumerate(entries):
        name = entry.get("path", entry.get("file")) if isinstance(entry, Mapping) else entry
        if not isinstance(name, str):
            raise InputError(manifest, f"shard #{k}: expected a path string or an object with 'path'")
        shard = directory / name
        if not shard.is_file():
            raise InputError(manifest, f"shard #{k} ({name}) is listed but missing")
        shards.append((shard, name))
    return shards


def record_to_doc(record: Any, default_id: str, text_field: str = "auto") -> SourceDoc:
    """A SourceDoc from one record; ValueError (the problem, for InputError / skip) when unusable."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fields = TEXT_FIELDS if text_field == "auto" else (text_field,)
    name = next((f for f in fields if f in record), None)
    if name is None:
        raise ValueError(f"no text field (looked for {', '.join(repr(f) for f in fields)})")
    text = record[name]
    if text is None:
        text = ""  # a null text is an empty document: a counted skip, not an error
    if not isinstance(text, str):
        raise ValueError(f"field {name!r} must be a string, got {type(text).__name__}")
    rid = record.get("id")
    doc_id = str(rid) if rid is not None else default_id
    origin = record.get("origin", record.get("path"))
    if not isinstance(origin, str) or not origin:
        origin = doc_id.rsplit("#", 1)[0] if rid is not None and "#" in doc_id else doc_id
    thoughts = None
    if record.get("thoughts") is not None:
        from ra3_megatron.core.latent import InfusedSnippet

        infused = InfusedSnippet.from_record({"id": doc_id, "text": text, "thoughts": record["thoughts"]})
        thoughts = infused.thoughts
    return SourceDoc(id=doc_id, text=text, origin=origin, thoughts=thoughts)


def _accept(record: Any, default_id: str, where: str, line: int | None, *, path: Path, text_field: str,
            skip: bool, report: SkipReport, max_line_chars: int) -> SourceDoc | None:
    try:
        doc = record_to_doc(record, default_id, text_field)
    except ValueError as exc:
        if not skip:
            problem = f"{exc} (use --skip-bad-lines to skip bad records)"
            if line is None:  # parquet / HF rows: name the row in the message
                problem = f"{where.removeprefix(str(path)).strip()}: {problem}"
            raise InputError(path, problem, line) from None
        report.add(BAD_RECORD, where, str(exc))
        return None
    return doc if check_text(doc.text, where, report, max_line_chars) else None


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        head = fh.read(1024).lstrip()
        fh.seek(0)
        if path.suffix == ".json" and head.startswith(b"["):  # a .json file holding one array
            try:
                items = json.load(fh)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(path, f"not a valid JSON array: {exc}") from None
            for k, item in enumerate(items):
                yield k + 1, json.dumps(item).encode()
            return
        yield from enumerate(fh, start=1)


def iter_jsonl(path: Path, name: str, *, text_field: str, skip: bool, report: SkipReport,
               max_line_chars: int) -> Iterator[SourceDoc]:
    """Documents of one jsonl file; `name` prefixes default ids (`NAME:LINE`)."""
    opts = {"path": path, "text_field": text_field, "skip": skip, "report": report,
            "max_line_chars": max_line_chars}
    for number, raw in _jsonl_lines(path):
        if not raw.strip():
            continue  # blank lines separate nothing and hold nothing
        where = f"{path}:{number}"
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON ({exc.msg} at column {exc.colno}; truncated line?)"
        else:
            doc = _accept(record, f"{name}:{number}", where, number, **opts)
            if doc is not None:
                yield doc
            continue
        if not skip:
            raise InputError(path, f"{problem} (use --skip-bad-lines to skip bad lines)", number)
        report.add(BAD_JSONL_LINE, where, problem)


def _iter_rows(dataset, batch_size: int = 1000) -> Iterator[dict]:
    for batch in dataset.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def iter_parquet(path: Path, *, text_field: str, skip: bool, report: SkipReport,
                 max_line_chars: int) -> Iterator[SourceDoc]:
    import datasets

    stream = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
    opts = {"path": path, "text_field": text_field, "skip": skip, "report": report,
            "max_line_chars": max_line_chars}
    for row, record in enumerate(stream):
        doc = _accept(record, f"{path.name}#{row}", f"{path} row {row}", None, **opts)
        if doc is not None:
            yield doc


def iter_saved_dataset(path: Path, *, text_field: str, skip: bool, report: SkipReport,
                       max_line_chars: int) -> Iterator[SourceDoc]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    opts = {"path": path, "text_field": text_field, "skip": skip, "report": report,
            "max_line_chars": max_line_chars}
    for split, dataset in splits:
        prefix = f"{split}/" if split else ""
        for row, record in enumerate(_iter_rows(dataset)):
            doc = _accept(record, f"{prefix}{row}", f"{path} {prefix}row {row}", None, **opts)
            if doc is not None:
                yield doc
