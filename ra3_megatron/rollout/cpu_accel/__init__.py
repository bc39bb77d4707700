"""The opt-in CPU accelerator: the `hf-cpu` rollout backend and the kernels it runs on.

It exists for CPU-only machines (tests, the tiny and SmolLM2 CPU recipes, a laptop); GPU runs use
vLLM and never import it. What it adds over the `hf` reference engine:
- `kv_store`: prefix K/V kept between calls (an LRU bounded in bytes);
- `prefix_scorer`: score groups computing each shared prefix once;
- `packed_llama`, `lean_decode`, `gqa_attention`, `onednn`: a Llama-family forward without
  transformers' per-call work, oneDNN matmuls, grouped-query attention without repeated K/V;
- `hf_sampling`: all prompts of a call in one batched decode loop;
- `engine`: `CPUAccelEngine`, the `hf` contract on top of them.
It is tested equal to the reference (tests/integration/test_cpu_accel.py) and measured against it
(tools/bench_scoring.py). Its private torch / transformers calls are listed in
`rollout/private_apis.py` and pinned by the `cpu` extra.
"""
