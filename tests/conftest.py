"""Shared test configuration: GPU tests skip themselves through one autouse fixture."""

from __future__ import annotations

import os

import pytest

# Tests never reach a model or data hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request):
    if request.node.get_closest_marker("gpu") and not _cuda_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir():
    """HF tokenizer dir: byte-level BPE (8k) trained on the stdlib; built once, cached."""
    from ra3_megatron.models.tiny import tiny_tokenizer_dir as build

    return build()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir():
    """HF checkpoint dir of the tiny Llama (random init, float32 safetensors + tokenizer)."""
    from ra3_megatron.models.tiny import tiny_model_dir as build

    return build()
