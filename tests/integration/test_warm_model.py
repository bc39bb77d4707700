"""The demo's warmed-up tiny model: built through real `ra3 prepare` + `ra3 mstep`, and it has learned code."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from ra3_megatron.models.warm import resolve_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _nll_per_token(model_dir: str, text: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids[:512]])
    with torch.inference_mode():
        return float(model(ids, labels=ids).loss)


def test_resolve_model_passes_paths_through():
    assert resolve_model("some/dir") == "some/dir"


def test_warm_model_beats_random_init_on_unseen_code(tiny_model_dir):
    warm = resolve_model("tiny-warm")
    assert (Path(warm) / "model.safetensors").is_file() and (Path(warm) / "tokenizer.json").is_file()
    # json/decoder.py is not among the warm-up packages: the gain must generalise to unseen code.
    text = (Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text(encoding="utf-8")
    random_nll, warm_nll = _nll_per_token(str(tiny_model_dir), text), _nll_per_token(warm, text)
    assert warm_nll < random_nll - 2.0, (random_nll, warm_nll)
