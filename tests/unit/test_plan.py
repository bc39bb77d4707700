"""`ra3 plan`: parameters counted on the meta device match the published sizes; per-rank shares
follow TP and PP; every GPU recipe gets its table, and what does not fit is refused with a layout."""

from __future__ import annotations

import pytest

from ra3_megatron.cli.main import main
from ra3_megatron.recipes.plan import ARCHITECTURES, Layout, model_config, model_shape, trainer_parts

pytestmark = pytest.mark.unit

GPU_RECIPES = ("llama32_1b_8gpu_h100_bf16", "qwen25_1p5b_8gpu_h100_bf16", "llama31_8b_8gpu_h100_fp8")


@pytest.mark.parametrize("name,billions", [("Llama-3.2-1B", 1.236), ("Qwen2.5-1.5B", 1.544), ("Llama-3.1-8B", 8.030)])
def test_meta_device_count_matches_the_published_size(name, billions):
    shape = model_shape(model_config(f"checkpoints/{name}"))
    assert shape.total / 1e9 == pytest.approx(billions, rel=2e-3)
    # TP halves the projections, embedding and output; only the norms are on every rank
    assert shape.per_rank(2, 1) == pytest.approx(shape.total / 2, rel=2e-3)
    assert shape.per_rank(1, 2) < 0.65 * shape.total  # two stages: half the layers each
    assert name in ARCHITECTURES


def test_optimizer_state_shards_over_data_parallel_ranks_only_with_the_distributed_optimizer():
    shape = model_shape(model_config("checkpoints/Llama-3.1-8B"))
    one = trainer_parts(shape, Layout(1, 1, 1, False), seq=1024, micro_batch=1)
    assert one["weights"] + one["grads"] + one["optimizer"] == pytest.approx(8.03e9 * 18 / 2**30, rel=3e-3)
    assert trainer_parts(shape, Layout(1, 1, 8, True), seq=1024, micro_batch=1)["optimizer"] == pytest.approx(
        one["optimizer"] / 8)
    assert trainer_parts(shape, Layout(1, 1, 8, False), seq=1024, micro_batch=1)["optimizer"] == one["optimizer"]


def test_every_gpu_recipe_fits_its_8_gpus_with_the_rl_trainers_over_the_job(capsys):
    for name in GPU_RECIPES:
        rc = main(["plan", "--recipe", name])
        out = capsys.readouterr().out
        for phase in ("M-step", "E-step rollouts", "E-step q's RL update", "GRPO rollouts", "GRPO update"):
            assert phase in out, (name, phase)
        assert rc == 0, out
        assert "DP=1 (engines asleep)" not in out  # q's trainer spans the job, Adam sharded over DP


def test_the_8b_recipe_is_refused_on_one_gpu_and_with_engines_too_large(capsys):
    assert main(["plan", "--recipe", "llama31_8b_8gpu_h100_fp8", "--gpus", "1"]) == 1
    out = capsys.readouterr().out
    assert "M-step does not fit" in out and "2 GPUs would" in out
    assert "E-step q's RL update does not fit" in out
    # On one rank (as the RL trainer ran before it spanned the job) q with Adam needs ~160 GiB.
    assert main(["plan", "--recipe", "llama31_8b_8gpu_h100_fp8", "ranks=1", "--gpus", "8"]) == 1
    out = capsys.readouterr().out
    assert "E-step q's RL update does not fit: needs" in out and "rl.tp=" in out
    assert main(["plan", "--recipe", "llama31_8b_8gpu_h100_fp8", "engines.memory_fraction=0.4"]) == 1
    assert "asks for" in capsys.readouterr().out


def test_a_checkpoint_dir_config_and_overrides_are_read(tiny_model_dir, capsys):
    rc = main(["plan", "--recipe", "qwen25_1p5b_8gpu_h100_bf16", f"em.model={tiny_model_dir}", "mstep.tp=2",
               "--gpu-memory-gb", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "TP=2 PP=1 DP=4" in out
    assert main(["plan", "--recipe", "qwen25_1p5b_8gpu_h100_bf16", "em.model=/no/such/model"]) != 0
    assert "no config.json" in capsys.readouterr().err


def test_one_engine_for_pi_and_q_halves_the_engine_weights(capsys):
    recipe = "llama31_8b_8gpu_h100_fp8"
    assert main(["plan", "--recipe", recipe, "engines.memory_fraction=0.4"]) == 1  # two engines at 40%: too much
    capsys.readouterr()
    assert main(["plan", "--recipe", recipe, "engines.memory_fraction=0.4", "engines.share_pi_q=true"]) == 0
    assert "1 vLLM engine for both, weights swapped" in capsys.readouterr().out
