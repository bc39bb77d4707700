"""Tiny HF checkpoints built in-test beside ra3_megatron.models.tiny: Qwen2 with qkv bias, and a
Llama with llama3 rope scaling (non-default low/high factors, so Megatron's hard-coded ones would
not match). Random weights; biases drawn non-zero so that a dropped bias shows in the logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def _save(model, out: Path, tokenizer_dir: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists() and not (out / name).exists():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return out


def qwen2_tiny_dir(out: Path, tokenizer_dir: Path, vocab_size: int, *, tie: bool = True) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return _save(model, out, tokenizer_dir)


def llama3_rope_tiny_dir(out: Path, tokenizer_dir: Path, vocab_size: int, *, layers: int = 4) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 2.0,
        "high_freq_factor": 8.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 10000.0,
    }
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        rope_parameters=rope,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(2)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    return _save(model, out, tokenizer_dir)
