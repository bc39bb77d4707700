"""Evaluation: a sandbox for model-written code, the HumanEval / MBPP / EvalPlus benchmarks,
sample generation through the rollout engines, and pass@k (`ra3 eval`).

Modules: `sandbox` (warm sandboxes; what it protects against: docs/SANDBOX.md), `isolation`
(bwrap set-up), `session` (one program's child), `checker` (tests run on the trusted side),
`wire` (plain data across the boundary), `benchmarks` / `problem` / `prompts` (datasets),
`samples` (samples.jsonl in, results out), `generate` (samples from a model, resumable).
Nothing here imports torch, vLLM or Megatron at import time.
"""
