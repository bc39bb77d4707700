"""Fixtures shared by the integration tests of the transformers backends."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir):
    """The tiny Llama with larger random weights: log-probs vary by nats, so errors show."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return model
