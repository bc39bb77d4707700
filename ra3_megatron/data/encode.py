"""Documents -> tokenized snippets (with token classes), one batch at a time; what `ra3 prepare` workers run.

Plain code: the batch is tokenized once (the tokenizer's batch call), documents within
`max_tokens` become one snippet with those ids; longer ones are planned from their token
offsets (`chunking.plan_chunks`), the chunks are tokenized on their own (so every snippet's ids
are exactly the tokenizer's ids for its text) and any chunk over budget is re-split (`refit`).
All classes are code.

Infused records (E-step output, `doc.thoughts` set): rendered with
`ra3_megatron.core.latent.InfusedSnippet`, classes from `ra3_megatron.core.token_classes`
(the same rule as `encode_with_classes`); not re-chunked, since their thoughts are tied to lines
(one over budget is counted in `over_budget`; GPTDataset cuts long documents into samples anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ra3_megatron.data.chunking import offset_cost, plan_chunks, planning_budget, refit
from ra3_megatron.data.doc import SourceDoc, count_lines

__all__ = ["Snippet", "BatchResult", "encode_documents"]


@dataclass(frozen=True)
class Snippet:
    id: str  # ORIGIN-DOC-ID#K for chunks of plain code, the record id for infused records
    origin: str
    text: str  # the tokenized text (rendered, thoughts included, for infused records)
    ids: np.ndarray  # int32
    classes: np.ndarray | None  # uint8 (None: all code)
    record: dict | None = None  # the infused record (id, original text, thoughts), for the snippets jsonl


@dataclass
class BatchResult:
    snippets: list[Snippet] = field(default_factory=list)
    documents: int = 0
    lines: int = 0
    split_documents: int = 0  # documents over budget, chunked
    split_without_ast: int = 0  # ... of which did not parse as Python (blank-line / line boundaries)
    hard_splits: int = 0  # single lines split inside the line
    over_budget: int = 0  # infused records over max_tokens (kept whole)
    infused: int = 0


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def _encode_infused(docs: list[SourceDoc], tok, result: BatchResult, max_tokens: int) -> dict[int, list[Snippet]]:
    from ra3_megatron.core.latent import InfusedSnippet
    from ra3_megatron.core.token_classes import token_classes

    rendered = []
    for doc in docs:
        infused = InfusedSnippet(id=doc.id, text=doc.text, thoughts=doc.thoughts)
        text, spans = infused.render_with_spans()
        rendered.append((infused, text, spans))
    encodings = tok.encode_batch([text for _, text, _ in rendered]) if rendered else []
    out = {}
    for k, ((infused, text, spans), enc) in enumerate(zip(rendered, encodings)):
        classes = np.asarray(token_classes(enc.offsets, spans), dtype=np.uint8)
        result.over_budget += bool(max_tokens) and len(enc.ids) > max_tokens
        out[k] = [Snippet(id=infused.id, origin=docs[k].origin, text=text, ids=_ids(enc.ids),
                          classes=classes, record=infused.to_record())]
    return out


def encode_documents(docs: list[SourceDoc], tok, max_tokens: int) -> BatchResult:
    """Snippets of `docs`, in document order. `tok` is a `LoadedTokenizer`; `max_tokens` 0 = no chunking."""
    result = BatchResult(documents=len(docs), lines=sum(count_lines(d.text) for d in docs))
    plain = [k for k, d in enumerate(docs) if d.thoughts is None]
    infused = [k for k, d in enumerate(docs) if d.thoughts is not None]
    result.infused = len(infused)
    per_doc: dict[int, list[Snippet]] = {}
    for local, snippets in _encode_infused([docs[k] for k in infused], tok, result, max_tokens).items():
        per_doc[infused[local]] = snippets

    encodings = tok.encode_batch([docs[k].text for k in plain]) if plain else []
    pending: list[tuple[int, list[str]]] = []  # (doc index, chunk texts) to tokenize on their own
    for k, enc in zip(plain, encodings):
        doc = docs[k]
        if not max_tokens or len(enc.ids) <= max_tokens:
            per_doc[k] = [Snippet(id=f"{doc.id}#0", origin=doc.origin, text=doc.text, ids=_ids(enc.ids), classes=None)]
            continue
        plan = plan_chunks(doc.text, offset_cost([s for s, _ in enc.offsets]), planning_budget(max_tokens))
        result.split_documents += 1
        result.split_without_ast += plan.parsed is False
        result.hard_splits += plan.hard_splits
        pending.append((k, plan.chunks))

    flat = [c for _, chunks in pending for c in chunks]
    chunk_ids = [enc.ids for enc in tok.encode_batch(flat)] if flat else []
    pos = 0
    for k, chunks in pending:
        ids = chunk_ids[pos : pos + len(chunks)]
        pos += len(chunks)
        if any(len(i) > max_tokens for i in ids):  # a token merged across a boundary: re-split exactly
            fitted = refit(chunks, [len(i) for i in ids], lambda s: len(tok.encode(s)), max_tokens)
            by_text = dict(zip(chunks, ids))
            chunks, ids = fitted, [by_text.get(c) or tok.encode(c) for c in fitted]
        doc = docs[k]
        per_doc[k] = [Snippet(id=f"{doc.id}#{j}", origin=doc.origin, text=c, ids=_ids(i), classes=None)
                      for j, (c, i) in enumerate(zip(chunks, ids))]
    for k in range(len(docs)):
        result.snippets += per_doc[k]
    return result
