"""RLVR post-training: GRPO with unit-test rewards from the sandbox (`ra3 rlvr`).

problems (MBPP splits, user jsonl, the planted task) -> grpo (the loop) with batch (rollouts ->
policy-gradient rows), verify (sandbox rewards), runlog (metrics, TensorBoard, report) and config.
The policy trainers are the E-step's (`estep.rl.PolicyTrainer`: Megatron or torch).
"""
