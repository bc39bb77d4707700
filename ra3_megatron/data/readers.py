"""Readers: every supported input as one deterministic stream of `SourceDoc`s.

    from ra3_megatron.data.readers import iter_documents, SkipReport
    report = SkipReport()
    for doc in iter_documents("src/", report=report): ...

Inputs:
- a `.py` file, or a directory of them (recursive, sorted by relative path; hidden directories,
  `__pycache__`, `site-packages`, `dist-packages`, `node_modules` and any `exclude` glob matching a
  path component are left out). Files are read as bytes and decoded as strict UTF-8, so CRLF and
  a BOM survive byte for byte;
- `.jsonl` / `.json` / `.ndjson`: one JSON object per line (a `.json` file holding one array also
  works); the text is the `text`, `content` or `code` field (`text_field="auto"`, the first present)
  or the named field; E-step records `{"id", "text", "thoughts": [{"line", "text", "gain"}]}`
  carry their thoughts (validated by `ra3_megatron.core.latent.InfusedSnippet`);
- `.parquet` (streamed through `datasets`), or a directory written by `Dataset.save_to_disk` /
  `DatasetDict.save_to_disk` (through `datasets.load_from_disk`; every split, in saved order);
- a directory with a `manifest.json` (E-step output): the jsonl shards it lists, in its order.

Errors and skips: a missing path or unsupported file is an `InputError`; a bad jsonl line (e.g.
truncated) or bad record is an `InputError` naming file and line unless `on_error="skip"`, which
counts it in the `SkipReport`. Non-UTF-8, empty and over-long-line documents are always counted
skips (see `ra3_megatron.data.skips`). A Python syntax error is not a skip: it only turns off
AST-based chunking.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ra3_megatron.data import records
from ra3_megatron.data.doc import SourceDoc, check_text
from ra3_megatron.data.skips import FILE_TOO_LARGE, NON_UTF8, UNREADABLE, SkipReport
from ra3_megatron.errors import InputError

__all__ = ["SourceDoc", "SkipReport", "iter_documents", "python_files", "count_documents"]

DEFAULT_EXCLUDE = ("__pycache__", "site-packages", "dist-packages", "node_modules", ".*")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def _excluded(parts: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(part, pat) for part in parts for pat in exclude)


def python_files(root: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """The .py files under `root`, sorted by relative path, without excluded path components."""
    patterns = (*DEFAULT_EXCLUDE, *exclude)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).parts
        dirnames[:] = [d for d in dirnames if not _excluded((d,), patterns)]
        found += [(Path(*rel_dir, f).as_posix(), Path(dirpath) / f) for f in filenames
                  if f.endswith(".py") and not _excluded((f,), patterns)]
    return [path for _, path in sorted(found)]


def count_documents(path: str | os.PathLike, exclude: Sequence[str] = ()) -> int | None:
    """The number of files `iter_documents` will read for a code input (for a progress bar), else None."""
    p = Path(path)
    if p.is_dir() and records.kind_of_dir(p) == "code":
        return len(python_files(p, exclude))
    return 1 if p.suffix == ".py" else None


def read_code_file(path: Path, name: str, report: SkipReport, *, max_line_chars: int,
                   max_file_bytes: int) -> SourceDoc | None:
    """One code file as a SourceDoc with id and origin `name`, or None (skip counted)."""
    try:
        size = path.stat().st_size
        if size > max_file_bytes:
            report.add(FILE_TOO_LARGE, str(path), f"{size:,} bytes (limit {max_file_bytes:,})")
            return None
        data = path.read_bytes()
    except OSError as exc:  # permissions, a dangling symlink, a file that vanished
        report.add(UNREADABLE, str(path), exc.strerror or type(exc).__name__)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        report.add(NON_UTF8, f"{path}:{line}", f"byte 0x{data[exc.start]:02x} is not UTF-8")
        return None
    if not check_text(text, str(path), report, max_line_chars):
        return None
    return SourceDoc(id=name, text=text, origin=name)


def iter_documents(
    path: str | os.PathLike,
    *,
    text_field: str = "auto",
    on_error: str = "raise",
    report: SkipReport | None = None,
    max_line_chars: int = 20_000,
    max_file_bytes: int = 64 * 2**20,
    exclude: Sequence[str] = (),
) -> Iterator[SourceDoc]:
    """Yield the documents of `path` in a deterministic order (see the module docstring).

    on_error: "raise" (InputError naming file and line) or "skip" (counted as bad-jsonl-line /
    bad-record) for bad jsonl lines and records. `report` collects the skips (pass your own to read it).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report = report if report is not None else SkipReport()
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or directory")
    limits = {"max_line_chars": max_line_chars, "max_file_bytes": max_file_bytes}
    opts = {"text_field": text_field, "skip": on_error == "skip", "report": report,
            "max_line_chars": max_line_chars}
    if p.is_file():
        if p.suffix == ".py":
            doc = read_code_file(p, p.name, report, **limits)
            yield from [doc] if doc else []
        elif p.suffix in JSONL_SUFFIXES:
            yield from records.iter_jsonl(p, p.name, **opts)
        elif p.suffix == ".parquet":
            yield from records.iter_parquet(p, **opts)
        else:
            raise InputError(p, "unsupported input: expected a .py, .jsonl, .json or .parquet file, "
                                "or a directory (of .py files, a saved HF dataset, or jsonl shards + manifest.json)")
        return
    kind = records.kind_of_dir(p)
    if kind == "manifest":
        for shard, name in records.manifest_shards(p):
            yield from records.iter_jsonl(shard, name, **opts)
    elif kind == "hf":
        yield from records.iter_saved_dataset(p, **opts)
    else:
        files = python_files(p, exclude)
        if not files:
            raise InputError(p, "no .py files in this directory (and no manifest.json or saved HF dataset)")
        for f in files:
            doc = read_code_file(f, f.relative_to(p).as_posix(), report, **limits)
            if doc is not None:
                yield doc
