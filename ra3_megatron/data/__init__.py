"""Data: readers, snippet chunking, dedup, held-out split, Megatron indexed datasets, the M-step dataset.

Importing this package is cheap (no megatron, torch or tokenizers); the heavy names below load
on first use:

    from ra3_megatron.data import iter_documents, chunk_snippets          # pure Python
    from ra3_megatron.data import IndexedWriter, build_mstep_datasets     # megatron.core
    from ra3_megatron.data.prepare import prepare, PrepareConfig          # `ra3 prepare`
"""

from __future__ import annotations

import importlib

_LAZY = {
    "SourceDoc": "ra3_megatron.data.doc",
    "SkipReport": "ra3_megatron.data.skips",
    "iter_documents": "ra3_megatron.data.readers",
    "chunk_snippets": "ra3_megatron.data.chunking",
    "Deduper": "ra3_megatron.data.dedup",
    "is_heldout": "ra3_megatron.data.split",
    "load_tokenizer": "ra3_megatron.data.tokenizer",
    "IndexedWriter": "ra3_megatron.data.indexed",
    "open_indexed": "ra3_megatron.data.indexed",
    "LatentGPTDataset": "ra3_megatron.data.mstep_dataset",
    "build_mstep_datasets": "ra3_megatron.data.mstep_dataset",
    "PrepareConfig": "ra3_megatron.data.prepare",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
