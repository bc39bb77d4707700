"""Every recipe builds, its M-step arguments name real MStepConfig fields, and overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.recipes import RA3Recipe, get_recipe, recipe_names
from ra3_megatron.recipes.run import load_recipe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_builds_with_typed_phase_configs(name):
    from ra3_megatron.data.prepare import PrepareConfig
    from ra3_megatron.megatron.trainer import MStepConfig

    recipe = get_recipe(name)()
    assert isinstance(recipe, RA3Recipe)
    assert recipe.engines.backend in ("vllm", "hf", "hf-cpu", "fake")
    assert isinstance(recipe.em.mstep, MStepConfig) and isinstance(recipe.em.prepare, PrepareConfig)
    assert recipe.em.mstep.model == "" and recipe.em.prepare.input == ""  # set by the EM loop each round
    assert recipe.em.iterations >= 1


def test_overrides_reach_nested_fields():
    recipe = load_recipe("llama31_8b_8gpu_h100_fp8", ["em.estep.penalty=0.2", "em.iterations=3",
                                                      "engines.backend=hf", "em.mstep.steps=5", "rl.tp=2",
                                                      "em.prepare.exclude+=tests"])
    assert recipe.em.estep.penalty == 0.2
    assert recipe.em.iterations == 3
    assert recipe.engines.backend == "hf"
    assert recipe.em.mstep.steps == 5 and recipe.em.mstep.tp == 2  # the recipe's other M-step fields stay
    assert recipe.rl.tp == 2
    assert recipe.em.prepare.exclude == ("tests",)


def test_a_round_fills_the_phase_paths_and_keeps_the_rest():
    from ra3_megatron.em.loop import EMConfig
    from ra3_megatron.megatron.trainer import MStepConfig

    em = EMConfig(model="m", input="i", run_dir="r", mstep=MStepConfig(steps=7))
    m = em.mstep_round(data="d/train", model="pi", out_dir=Path("r/iter_1/mstep"))
    assert (m.model, m.data, m.out, m.steps) == ("pi", "d/train", "r/iter_1/mstep", 7)
    p = em.prepare_round(estep_dir=Path("e"), out_dir=Path("o"), tokenizer="pi")
    assert (p.input, p.output, p.tokenizer) == ("e", "o/train", "pi")
    with pytest.raises(ConfigError, match="mstep.model is set by the EM loop"):
        EMConfig(model="m", input="i", run_dir="r", mstep=MStepConfig(model="x"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("em.estep.penalty=-1", "penalty"),
        ("em.nope=1", "no field 'nope'"),
        ("em.iterations=two", "expected int"),
        ("penalty", "KEY=VALUE"),
    ],
)
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("llama32_1b_8gpu_h100_bf16", [override])


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match="tiny_cpu"):
        get_recipe("nope")


def test_a_gpu_recipe_runs_only_as_its_torchrun_job():
    from ra3_megatron.recipes.run import check_launch

    big, tiny = load_recipe("llama31_8b_8gpu_h100_fp8"), load_recipe("tiny_cpu")
    assert (big.ranks, big.rl.tp, big.em.nproc) == (8, 4, 1)  # the M-step runs in the job, not a nested launch
    check_launch(big, 8)
    check_launch(tiny, 1)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node 8"):
        check_launch(big, 1)
    with pytest.raises(ConfigError, match="started as 2 ranks"):
        check_launch(tiny, 2)


def test_the_nemo_run_launcher_starts_a_gpu_recipe_as_a_torchrun_job():
    """recipes/nemo_run_ra3.py: a recipe of 8 ranks gets NeMo-Run's torchrun launcher with 8 tasks
    (checked against a stand-in `run` module: NeMo-Run is an optional extra)."""
    import importlib.util
    import types
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "nemo_run_ra3.py"
    spec = importlib.util.spec_from_file_location("nemo_run_ra3", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = types.SimpleNamespace(LocalExecutor=lambda **kw: kw)
    assert module.executor_for(run, load_recipe("llama31_8b_8gpu_h100_fp8").ranks) == {
        "ntasks_per_node": 8, "launcher": "torchrun"}
    assert module.executor_for(run, load_recipe("tiny_cpu").ranks) == {}
