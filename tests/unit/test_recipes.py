"""Every recipe builds, its M-step arguments name real MStepConfig fields, and overrides apply."""

from __future__ import annotations

import dataclasses

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.recipes import RA3Recipe, get_recipe, recipe_names
from ra3_megatron.recipes.run import load_recipe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_builds_with_valid_fields(name):
    from ra3_megatron.megatron.trainer import MStepConfig

    recipe = get_recipe(name)()
    assert isinstance(recipe, RA3Recipe)
    assert recipe.backend in ("vllm", "hf", "fake")
    fields = {f.name for f in dataclasses.fields(MStepConfig)}
    for arg in recipe.em.mstep_args:
        key = arg.partition("=")[0]
        assert key in fields, f"{name}: mstep arg {arg!r} is not an MStepConfig field"
    assert recipe.em.iterations >= 1


def test_overrides_reach_nested_fields():
    recipe = load_recipe("llama31_8b_8gpu_h100_fp8", ["em.estep.penalty=0.2", "em.iterations=3", "backend=hf",
                                                      "em.mstep_args+=steps=5"])
    assert recipe.em.estep.penalty == 0.2
    assert recipe.em.iterations == 3
    assert recipe.backend == "hf"
    assert recipe.em.mstep_args[-1] == "steps=5"


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
