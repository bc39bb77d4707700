"""Recipes: plain functions returning the whole typed config of an RA3 run.

    ra3 demo                                                  # the embedded default, tiny_cpu (`make demo`)
    ra3 demo --recipe smollm2_135m_cpu run_dir=runs/smol estep.penalty=0.1
    ra3 demo --list                                           # lists them

Names follow the model, size, GPU count, hardware and precision. A recipe never downloads:
models and data are local paths (the embedded ones are built from PyPI packages and the
interpreter's standard library); override `em.model` / `em.input` for real runs.
"""

from ra3_megatron.recipes.registry import RA3Recipe, get_recipe, recipe_names, register_recipe  # noqa: F401
