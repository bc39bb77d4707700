"""The `ra3 prepare` pipeline: read -> chunk -> dedup -> tokenize -> held-out split -> indexed dataset.

    from ra3_megatron.data.prepare import PrepareConfig, prepare
    summary = prepare(PrepareConfig(input="src/", tokenizer="tiny", output="out/code"))

Outputs: PREFIX.bin/.idx + PREFIX_classes.bin/.idx (or PREFIX_train* / PREFIX_valid* with a
holdout), PREFIX.summary.json, and with `write_snippets` PREFIX.snippets.jsonl (one
{"id", "origin", "split", "text"} per written snippet, in dataset order; infused records keep
their "thoughts" and original "text"). Every output appears only when the run completes.

Order and content do not depend on `workers`: batches are processed in parallel and consumed in
input order; dedup (first occurrence wins) and the split run in the parent.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from itertools import islice

from ra3_megatron.data.dedup import Deduper
from ra3_megatron.data.encode import BatchResult, encode_documents
from ra3_megatron.data.readers import SkipReport, count_documents, iter_documents
from ra3_megatron.data.split import is_heldout, split_prefixes
from ra3_megatron.data.tokenizer import load_tokenizer
from ra3_megatron.errors import ConfigError
from ra3_megatron.overrides import documented

__all__ = ["PREPARE_PATHS", "PrepareConfig", "prepare"]


# The three paths the EM loop fills in each round (a config for every round holds the rest).
PREPARE_PATHS = ("input", "tokenizer", "output")


@dataclass(kw_only=True)
class PrepareConfig:
    input: str = documented("a .py file or directory of them, .jsonl/.json, .parquet, a saved HF dataset dir, "
                            "or an E-step output dir (manifest.json)", "")
    tokenizer: str = documented("HF tokenizer dir, tokenizer.json, `tiny` or `smollm2`", "")
    output: str = documented("output prefix (PREFIX.bin / PREFIX.idx ...)", "")
    max_tokens: int = documented("snippet token budget; 0 = no chunking", 2048)
    holdout: float = documented("fraction of files held out (PREFIX_train / PREFIX_valid); 0 = one PREFIX", 0.0)
    dedup: bool = documented("drop exact duplicate snippets", True)
    workers: int = documented("worker processes for chunking + tokenizing", 1)
    skip_bad_lines: bool = documented("count bad jsonl lines / records as skips instead of stopping with an error",
                                      False)
    limit: int | None = documented("read at most N documents")
    text_field: str = documented("record field with the code (auto: text, content, code)", "auto")
    max_line_chars: int = documented("skip documents with a longer line (minified / generated data)", 20_000)
    exclude: tuple[str, ...] = documented("skip files with a path component matching GLOB, e.g. test",
                                          default_factory=tuple)
    eos_token: str | None = documented("end-of-document token (default: the tokenizer's eos)")
    write_snippets: bool = documented("also write PREFIX.snippets.jsonl", False)
    progress: bool = documented("a progress bar on stderr", True)
    batch_docs: int = documented("documents per worker batch", 64)
    batch_chars: int = documented("characters per worker batch at most", 2_000_000)

    def validate(self) -> None:
        missing = [name for name in PREPARE_PATHS if not getattr(self, name)]
        if missing:
            raise ConfigError("prepare needs " + ", ".join(missing))
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")


def _batches(docs: Iterable, n: int, chars: int) -> Iterator[list]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if len(batch) >= n or size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_WORKER_TOK = None


def _worker_init(tok_path: str, eos_token: str | None) -> None:
    global _WORKER_TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the workers are the parallelism
    _WORKER_TOK = load_tokenizer(tok_path, eos_token=eos_token)


def _worker_run(batch: list, max_tokens: int) -> BatchResult:
    return encode_documents(batch, _WORKER_TOK, max_tokens)


def _ordered_map(pool, batches: Iterator[list], max_tokens: int, window: int) -> Iterator[BatchResult]:
    """pool.imap with at most `window` batches in flight (imap would read the whole input ahead)."""
    inflight: deque = deque()
    for batch in batches:
        inflight.append(pool.apply_async(_worker_run, (batch, max_tokens)))
        if len(inflight) >= window:
            yield inflight.popleft().get()
    while inflight:
        yield inflight.popleft().get()


class _AtomicText:
    """A text file written under a temporary name and renamed into place on success."""

    def __init__(self, path: str) -> None:
        self.path, self.tmp = path, f"{path}.tmp-{os.getpid()}"

    def __enter__(self):
        from ra3_megatron.data.indexed import remove_stale_temporaries

        remove_stale_temporaries(self.path)
        self.fh = open(self.tmp, "w", encoding="utf-8")
        return self.fh

    def __exit__(self, exc_type, exc, tb) -> None:
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.remove(self.tmp)


def prepare(cfg: PrepareConfig) -> dict:
    """Run the pipeline; returns the summary (also written to PREFIX.summary.json)."""
    from ra3_megatron.data.indexed import IndexedWriter  # imports megatron.core: only when writing

    cfg.validate()
    start = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer, eos_token=cfg.eos_token)
    report = SkipReport()
    docs = iter_documents(cfg.input, text_field=cfg.text_field, on_error="skip" if cfg.skip_bad_lines else "raise",
                          report=report, max_line_chars=cfg.max_line_chars, exclude=cfg.exclude)
    if cfg.limit is not None:
        docs = islice(docs, cfg.limit)
    total = count_documents(cfg.input, cfg.exclude)
    if total is not None and cfg.limit is not None:
        total = min(total, cfg.limit)
    batches = _batches(docs, cfg.batch_docs, cfg.batch_chars)
    prefixes = split_prefixes(cfg.output, cfg.holdout)
    dedup = Deduper() if cfg.dedup else None
    stats = BatchResult()
    per_split = {name: {"prefix": p, "snippets": 0, "tokens": 0, "latent_tokens": 0, "origins": set()}
                 for name, p in prefixes.items()}
    with ExitStack() as stack:
        results: Iterable[BatchResult]
        if cfg.workers > 1:
            # fork before megatron is imported below; workers load their own tokenizer
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(
                cfg.workers, initializer=_worker_init, initargs=(tok.path, cfg.eos_token)))
            results = _ordered_map(pool, batches, cfg.max_tokens, window=2 * cfg.workers)
        else:
            results = (encode_documents(b, tok, cfg.max_tokens) for b in batches)
        writers = {name: stack.enter_context(IndexedWriter(p, tok.vocab_size, eos_id=tok.eos_id))
                   for name, p in prefixes.items()}
        jsonl = stack.enter_context(_AtomicText(f"{cfg.output}.snippets.jsonl")) if cfg.write_snippets else None
        bar = _progress(cfg.progress, total)
        stack.callback(bar.close)
        for result in results:
            for name in ("documents", "lines", "split_documents", "split_without_ast", "hard_splits",
                         "over_budget", "infused"):
                setattr(stats, name, getattr(stats, name) + getattr(result, name))
            for snip in result.snippets:
                if dedup is not None and not dedup.add(snip.text):
                    continue
                name = "valid" if is_heldout(snip.origin, cfg.holdout) else "train"
                writers[name].add_document(snip.ids, snip.classes)
                split = per_split[name]
                split["snippets"] += 1
                split["tokens"] += int(snip.ids.size)
                split["latent_tokens"] += int(snip.classes.sum()) if snip.classes is not None else 0
                split["origins"].add(snip.origin)
                if jsonl is not None:
                    record = {"id": snip.id, "origin": snip.origin, "split": name}
                    record.update(snip.record if snip.record is not None else {"text": snip.text})
                    jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            rate = stats.lines / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} lines/s", refresh=False)
            bar.update(stats.documents + report.total - bar.n)  # documents read, skips included
    seconds = time.perf_counter() - start
    summary = _summary(cfg, tok, report, stats, per_split, dedup, seconds)
    with _AtomicText(f"{cfg.output}.summary.json") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def _progress(enabled: bool, total: int | None):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc="prepare", unit="doc", file=sys.stderr, disable=not enabled,
                mininterval=0.5 if tty else 10.0, dynamic_ncols=tty)


def _summary(cfg, tok, report, stats, per_split, dedup, seconds) -> dict:
    splits = {name: {**{k: v for k, v in s.items() if k != "origins"}, "files": len(s["origins"])}
              for name, s in per_split.items()}
    tokens = sum(s["tokens"] for s in splits.values())
    snippets = sum(s["snippets"] for s in splits.values())
    warnings = [f"split {name!r} is empty" for name, s in splits.items() if s["snippets"] == 0]
    return {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "tokenizer": {"path": tok.path, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
        "files": stats.documents,  # documents read and kept (files, or records of a jsonl/parquet input)
        "lines": stats.lines,
        "snippets": snippets,
        "duplicates_dropped": dedup.dropped if dedup else 0,
        "tokens": tokens,  # without the EOS appended to each snippet
        "tokens_with_eos": tokens + snippets,
        "latent_tokens": sum(s["latent_tokens"] for s in splits.values()),
        "infused_records": stats.infused,
        "skipped": report.to_dict(),
        "chunking": {"max_tokens": cfg.max_tokens, "split_documents": stats.split_documents,
                     "split_without_ast": stats.split_without_ast, "hard_splits": stats.hard_splits,
                     "infused_over_budget": stats.over_budget},
        "splits": splits,
        "seconds": round(seconds, 3),
        "lines_per_s": round(stats.lines / seconds, 1) if seconds > 0 else None,
        "warnings": warnings,
    }


def format_summary(summary: dict) -> str:
    """The human-readable table `ra3 prepare` prints."""
    rows = [("files (documents)", f"{summary['files']:,}"), ("lines", f"{summary['lines']:,}"),
            ("snippets", f"{summary['snippets']:,}"), ("duplicates dropped", f"{summary['duplicates_dropped']:,}"),
            ("tokens (without EOS)", f"{summary['tokens']:,}"), ("latent tokens", f"{summary['latent_tokens']:,}"),
            ("split documents (no AST)",
             f"{summary['chunking']['split_documents']:,} ({summary['chunking']['split_without_ast']:,})"),
            ("skipped", f"{summary['skipped']['total']:,}")]
    rows += [(f"  {reason}", f"{n:,}") for reason, n in summary["skipped"]["by_reason"].items()]
    rows += [(f"split {name}", f"{s['snippets']:,} snippets, {s['tokens']:,} tokens, {s['files']:,} files -> {s['prefix']}")
             for name, s in summary["splits"].items()]
    rows += [("seconds", f"{summary['seconds']:.1f}"), ("lines/s", f"{summary['lines_per_s'] or 0:,.0f}")]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for reason, examples in summary["skipped"]["examples"].items():
        lines += [f"skipped {reason}: {e}" for e in examples]
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)
