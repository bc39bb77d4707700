"""Megatron indexed datasets with token classes alongside.

    with IndexedWriter("out/code", vocab_size=tok.vocab_size, eos_id=tok.eos_id) as w:
        w.add_document(ids, classes)        # classes: 0 = code, 1 = latent; None = all code

writes, through megatron.core's `IndexedDatasetBuilder`:
- `PREFIX.bin` / `PREFIX.idx`: the token ids (dtype `DType.optimal_dtype(vocab_size)`: uint16 below
  65,500 tokens, else int32), one sequence per document, readable by `IndexedDataset(PREFIX)`;
- `PREFIX_classes.bin` / `PREFIX_classes.idx`: uint8 classes with exactly the same document structure.
With `eos_id` set, every document gets one EOS token appended (class code): Megatron's GPTDataset
concatenates documents into fixed-length samples, and the EOS is what separates them (it is also
the `eod` of the dataset's tokenizer, for `eod_mask_loss` / `reset_attention_mask`).

Crash safety: everything is written under temporary names (`PREFIX.tmp-PID*`) and renamed on a
successful close, the token `.idx` last (an old `PREFIX.idx` is removed first), so a crash never
leaves a dataset that `IndexedDataset.exists(PREFIX)` takes for complete; on an exception the
temporary files are removed, and those of a killed writer are removed by the next one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["IndexedWriter", "classes_prefix", "open_indexed"]


def quiet_megatron_import() -> None:
    """Import megatron.core without its "Transformer Engine and Apex are not installed" warnings:
    the data path never uses either."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import megatron.core.datasets.indexed_dataset  # noqa: F401


def remove_stale_temporaries(path: str) -> None:
    """Delete `PATH.tmp-PID*` files left by a killed writer (PID no longer running)."""
    base = Path(path)
    for tmp in base.parent.glob(f"{base.name}.tmp-*"):
        pid = tmp.name[len(base.name) + len(".tmp-") :].split(".")[0].split("_")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


def classes_prefix(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}_classes"


class IndexedWriter:
    def __init__(self, prefix: str | os.PathLike, vocab_size: int, *, eos_id: int | None = None) -> None:
        quiet_megatron_import()
        from megatron.core.datasets.indexed_dataset import DType

        self.prefix = os.fspath(prefix)
        self.vocab_size = int(vocab_size)
        self.eos_id = eos_id
        self.dtype = DType.optimal_dtype(self.vocab_size)
        if eos_id is not None and not 0 <= eos_id < self.vocab_size:
            raise ValueError(f"eos_id {eos_id} is outside the vocabulary (size {self.vocab_size})")
        self._tmp = f"{self.prefix}.tmp-{os.getpid()}"
        self._builders = None
        self.documents = 0
        self.tokens = 0  # EOS tokens included

    def _paths(self, base: str) -> list[tuple[str, str]]:
        return [(f"{base}_classes.bin", f"{self.prefix}_classes.bin"), (f"{base}_classes.idx", f"{self.prefix}_classes.idx"),
                (f"{base}.bin", f"{self.prefix}.bin"), (f"{base}.idx", f"{self.prefix}.idx")]

    def open(self) -> IndexedWriter:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.prefix)
        self._builders = (IndexedDatasetBuilder(f"{self._tmp}.bin", dtype=self.dtype),
                          IndexedDatasetBuilder(f"{self._tmp}_classes.bin", dtype=np.uint8))
        return self

    def add_document(self, ids, classes=None) -> None:
        """One document: token ids and per-token classes (0 code / 1 latent; None = all code)."""
        if self._builders is None:
            raise RuntimeError("IndexedWriter is not open (use it as a context manager)")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("empty document")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        cls = np.zeros(ids.size, np.uint8) if classes is None else np.asarray(classes).reshape(-1)
        if cls.size != ids.size:
            raise ValueError(f"{ids.size} tokens but {cls.size} classes")
        if cls.size and (cls.min() < 0 or cls.max() > 1):
            raise ValueError("classes must be 0 (code) or 1 (latent)")
        if self.eos_id is not None:
            ids = np.append(ids, self.eos_id)
            cls = np.append(cls, 0)
        tokens, classes_builder = self._builders
        tokens.add_document(ids.astype(self.dtype), [ids.size])
        classes_builder.add_document(cls.astype(np.uint8), [cls.size])
        self.documents += 1
        self.tokens += int(ids.size)

    def close(self) -> None:
        """Finalize and move the files into place (the token .idx last)."""
        if self._builders is None:
            return
        tokens, classes_builder = self._builders
        self._builders = None
        classes_builder.finalize(f"{self._tmp}_classes.idx")
        tokens.finalize(f"{self._tmp}.idx")
        if os.path.exists(f"{self.prefix}.idx"):
            os.remove(f"{self.prefix}.idx")  # while swapping, the old dataset must not look complete
        for tmp, final in self._paths(self._tmp):
            os.replace(tmp, final)

    def abort(self) -> None:
        """Drop everything written so far (the temporary files); the final names are untouched."""
        if self._builders is not None:
            for builder in self._builders:
                builder.data_file.close()
            self._builders = None
        for tmp, _ in self._paths(self._tmp):
            if os.path.exists(tmp):
                os.remove(tmp)

    def __enter__(self) -> IndexedWriter:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_indexed(prefix: str | os.PathLike):
    """(tokens, classes) megatron.core IndexedDatasets; classes is None when PREFIX_classes is absent."""
    quiet_megatron_import()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = os.fspath(prefix)
    tokens = IndexedDataset(prefix, multimodal=False, mmap=True)
    cp = classes_prefix(prefix)
    classes = IndexedDataset(cp, multimodal=False, mmap=True) if IndexedDataset.exists(cp) else None
    return tokens, classes
