"""Tokenizers for the data pipeline: load by name or path, plus the adapter Megatron's GPTDataset needs.

`load_tokenizer(spec)` accepts `tiny` / `smollm2` (the embedded ones), an HF tokenizer directory
(with tokenizer.json; else loaded through transformers' AutoTokenizer, fast only) or a
tokenizer.json file. It returns the raw `tokenizers.Tokenizer` (its batch call is the fast path)
with the EOS / pad ids read from tokenizer_config.json (or `eos_token=`).

Literal special-token text inside source code (e.g. a file containing "<|endoftext|>") is
tokenized as plain text (`encode_special_tokens = True`): only the EOS we append ends a document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ra3_megatron.errors import ConfigError, InputError

__all__ = ["LoadedTokenizer", "resolve_tokenizer_path", "load_tokenizer", "MegatronTokenizerAdapter"]

_EOS_GUESSES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


@dataclass(frozen=True)
class LoadedTokenizer:
    backend: Any  # tokenizers.Tokenizer
    path: str  # the tokenizer dir or tokenizer.json it came from
    eos_id: int
    pad_id: int | None
    vocab_size: int  # including added tokens

    def encode_batch(self, texts: list[str]) -> list:
        """`tokenizers.Encoding`s (ids, offsets) without special tokens."""
        return self.backend.encode_batch(texts, add_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """The exact text of `ids` (special tokens kept, no clean-up of spaces)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


def resolve_tokenizer_path(spec: str) -> Path:
    """`tiny` / `smollm2` -> their cached dirs; else the given path (InputError when missing)."""
    if spec == "tiny":
        from ra3_megatron.models.tiny import tiny_tokenizer_dir

        return tiny_tokenizer_dir()
    if spec == "smollm2":
        from ra3_megatron.models.smollm2 import smollm2_dir

        return smollm2_dir()
    path = Path(spec)
    if not path.exists():
        raise InputError(path, "no such tokenizer (give an HF tokenizer dir, a tokenizer.json, `tiny` or `smollm2`)")
    return path


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(spec: str | Path, *, eos_token: str | None = None) -> LoadedTokenizer:
    from tokenizers import Tokenizer

    path = resolve_tokenizer_path(str(spec))
    config_dir = path if path.is_dir() else path.parent
    tok_file = path / "tokenizer.json" if path.is_dir() else path
    if tok_file.is_file():
        try:
            backend = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise InputError(tok_file, f"not a tokenizers tokenizer.json: {exc}") from None
    else:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path))
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"{path}: only fast (tokenizers-backed) tokenizers are supported")
    config: dict = {}
    config_file = config_dir / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
    eos_text = eos_token or _token_content(config.get("eos_token"))
    if eos_text is None:
        eos_text = next((t for t in _EOS_GUESSES if backend.token_to_id(t) is not None), None)
    eos_id = backend.token_to_id(eos_text) if eos_text else None
    if eos_id is None:
        raise ConfigError(f"{path}: cannot tell the end-of-document token ({eos_text!r} is not in the vocabulary); "
                          "pass --eos-token")
    pad_text = _token_content(config.get("pad_token"))
    pad_id = backend.token_to_id(pad_text) if pad_text else None
    backend.encode_special_tokens = True
    return LoadedTokenizer(backend=backend, path=str(path), eos_id=eos_id, pad_id=pad_id,
                           vocab_size=backend.get_vocab_size(with_added_tokens=True))


class MegatronTokenizerAdapter:
    """What megatron.core's GPTDataset reads from `config.tokenizer`: `vocab_size`, `eod`, `pad`
    (a pad id equal to eod is dropped by Megatron in favour of -1), `eos`, and `unique_identifiers`
    (hashed into the dataset cache key)."""

    def __init__(self, tok: LoadedTokenizer) -> None:
        self.tok = tok
        self.vocab_size = tok.vocab_size
        self.eod = tok.eos_id
        self.eos = tok.eos_id
        self.pad = tok.pad_id if tok.pad_id is not None else -1
        self.unique_identifiers = {"class": type(self).__name__, "path": tok.path,
                                   "vocab_size": tok.vocab_size, "eod": tok.eos_id}

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def detokenize(self, ids) -> str:
        return self.tok.decode(ids)
