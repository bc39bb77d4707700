"""vLLM engine settings that need no vLLM: the default context length."""

from __future__ import annotations

import json

import pytest

from ra3_megatron.rollout.vllm_engine import model_context_length

pytestmark = pytest.mark.unit


def test_context_length_is_the_models_own_capped(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    assert model_context_length(tmp_path, cap=4096) == 2048  # a 4096 default would fail to start
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 131072}}))
    assert model_context_length(tmp_path, cap=4096) == 4096
    (tmp_path / "config.json").write_text("not json")
    assert model_context_length(tmp_path, cap=1024) == 1024


def test_a_missing_vllm_is_a_clear_error(monkeypatch, tmp_path):
    """The default backend is vllm: without vLLM installed, creating an engine says what to do."""
    import importlib.util
    import sys

    from ra3_megatron.errors import ConfigError
    from ra3_megatron.rollout.base import create_engine

    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match="needs vLLM.*--backend hf"):
        create_engine("vllm", model=str(tmp_path))
