"""The RA3 E-step and the EM driver.

Pure algorithm (no torch at import):
- `config`: EStepConfig, every (ours) choice a field;
- `pieces`: how a snippet is cut into token pieces ("\\n" + line), thought middles, decision tokens;
- `search`: the left-to-right search over one snippet as a generator of engine requests, and the
  RL groups it produces; `batch`: many searches served in lockstep by batched engine calls;
  `probe`: all think/act decisions of a snippet from one forward pass;
- `stats`: counters, derived rates (think rate, rollout share, ...), stats.json / report.md / TB.
Plumbing:
- `rl`: groups -> policy-gradient batches -> `PolicyTrainer` steps -> weights to the sampler;
  trainers: `torch_trainer` (transformers) and `megatron_trainer` (the MegatronEngine);
- `infuse` + `shards`: the streaming, sharded, crash-safe infusion pass and its jsonl shards;
- `run`: one whole E-step (`ra3 estep`); `em` + `em_phases`: the EM loop (`ra3 em`).
"""
