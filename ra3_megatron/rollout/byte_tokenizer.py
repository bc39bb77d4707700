"""A byte-level tokenizer with the slice of the HF tokenizer API the rollout engines use.

The fake engine's default tokenizer: no files, no training, every string round-trips.
"""

from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then EOS (256) and PAD (257). A subset of the HF tokenizer API."""

    eos_token_id, pad_token_id, vocab_size = 256, 257, 258
    eos_token = "<|endoftext|>"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out, buf = [], bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
            elif i == self.eos_token_id and not skip_special_tokens:
                out.append(buf.decode("utf-8", errors="replace") + self.eos_token)
                buf = bytearray()
        return "".join(out) + buf.decode("utf-8", errors="replace")
