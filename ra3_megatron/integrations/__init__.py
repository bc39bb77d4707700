"""Adapters for existing training pipelines, thin over the same latent-aware loss.

- `megatron_lm`: forward step + dataset provider for Megatron-LM's `pretrain()`.
- `megatron_bridge`: `forward_step_func` for Megatron-Bridge's `pretrain(config, forward_step_func)`.
NeMo-Run launches any recipe through `recipes/nemo_run_ra3.py`.
"""
