"""The policy-gradient machinery q's RL (E-step) and GRPO (RLVR) share: examples and batches
(`batch`), tree packing of rows that share a prefix (`tree_rows`), and the trainers behind one
contract (`torch_trainer`, `megatron_trainer`)."""
