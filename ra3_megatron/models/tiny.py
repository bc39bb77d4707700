"""A tiny Llama-architecture model and a BPE tokenizer trained on the CPython standard library.

Used by the fast tests and the embedded demo: no downloads, a few seconds to build, cached.
head_dim is 32 because vLLM's CPU attention rejects smaller heads.

    python -m ra3_megatron.models.tiny     # builds both and prints their paths
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from ra3_megatron.models.cache import cached_dir

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True, kw_only=True)
class TinyTokenizerConfig:
    vocab_size: int = 8192
    max_files: int = 300  # stdlib files to train on (sorted, tests excluded): ~3 s on 2 cores
    max_bytes_per_file: int = 200_000


@dataclass(frozen=True, kw_only=True)
class TinyModelConfig:
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    seed: int = 0


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(asdict(obj), sort_keys=True).encode()).hexdigest()[:10]


def stdlib_files(max_files: int | None = None, include_tests: bool = False) -> list[Path]:
    """Sorted .py files of this interpreter's standard library (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if rel[0] in ("site-packages", "dist-packages"):
            continue
        if not include_tests and any(part in ("test", "tests", "idle_test") for part in rel):
            continue
        files.append(p)
    return files[:max_files] if max_files else files


def _build_tokenizer(out: Path, cfg: TinyTokenizerConfig) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        for p in stdlib_files(cfg.max_files):
            try:
                yield p.read_text(encoding="utf-8")[: cfg.max_bytes_per_file]
            except (UnicodeDecodeError, OSError):
                continue

    tok = Tokenizer(models.BPE())
    # Byte-level, without the prefix space: offsets map exactly to characters of the input.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    fast.model_max_length = 2048
    fast.save_pretrained(out)


def tiny_tokenizer_dir(cfg: TinyTokenizerConfig | None = None) -> Path:
    cfg = cfg or TinyTokenizerConfig()
    return cached_dir(f"tiny-tokenizer-{_key(cfg)}", lambda out: _build_tokenizer(out, cfg))


def tiny_llama_config(vocab_size: int, cfg: TinyModelConfig | None = None):
    from transformers import LlamaConfig

    cfg = cfg or TinyModelConfig()
    fields = {k: v for k, v in asdict(cfg).items() if k != "seed"}
    return LlamaConfig(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=1, **fields)


def _build_model(out: Path, cfg: TinyModelConfig, tok_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), cfg)).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def tiny_model_dir(cfg: TinyModelConfig | None = None, **overrides) -> Path:
    """A randomly initialised tiny Llama HF checkpoint (float32 safetensors + tokenizer)."""
    cfg = cfg or TinyModelConfig(**overrides)
    tok_dir = tiny_tokenizer_dir()
    return cached_dir(f"tiny-llama-{_key(cfg)}-{tok_dir.name}", lambda out: _build_model(out, cfg, tok_dir))


if __name__ == "__main__":
    print(tiny_tokenizer_dir())
    print(tiny_model_dir())
