"""CPU recipes: they run anywhere, on embedded models and the interpreter's standard library.

`em.model` may name an embedded model (`tiny`, `tiny-warm`, `smollm2`): it is built (once, cached)
when the recipe runs, not when it is listed or loaded.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from ra3_megatron.em.loop import EMConfig
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.megatron.trainer import MStepConfig
from ra3_megatron.recipes.registry import RA3Recipe
from ra3_megatron.rollout.settings import EngineSettings


def stdlib_corpus(name: str = "json") -> str:
    """A package or module of this interpreter's standard library: real, permissive Python code."""
    path = Path(sysconfig.get_paths()["stdlib"]) / name
    return str(path if path.exists() else path.with_suffix(".py"))


def tiny_cpu(*, run_dir: str = "runs/tiny_cpu", corpus: str = "json") -> RA3Recipe:
    """The embedded default (`make demo`): two EM rounds with a tiny Llama on the stdlib `json` package.

    The model is the 2-layer tiny Llama after 150 NTP steps on other stdlib packages (built once,
    ~1 minute, cached: `ra3_megatron.models.warm`). It is far too small to reason: this recipe shows
    the whole pipeline (E-step search + RL in Megatron, infusion, indexed data, M-step in Megatron,
    reports) in a few minutes on 2 cores, not the method's gains. smollm2_135m_cpu uses a real model.
    """
    estep = EStepConfig(penalty=0.05, samples=4, horizon=4, rl_steps=2, rl_snippets=4, lr=1e-4,
                        max_snippet_tokens=512, batch_snippets=8, micro_batch=16, seed=0)
    mstep = MStepConfig(steps=20, micro_batch_size=2, global_batch_size=4, seq_length=256, lr=1e-3,
                        warmup_steps=2, log_interval=5, split="100,0,0")
    em = EMConfig(model="tiny-warm", input=stdlib_corpus(corpus), run_dir=run_dir, iterations=2,
                  mstep=mstep, estep=estep)
    return RA3Recipe(em=em, engines=EngineSettings(backend="vllm", threads=2),
                     description=tiny_cpu.__doc__.splitlines()[0])


def smollm2_135m_cpu(*, run_dir: str = "runs/smollm2_135m_cpu", corpus: str = "json") -> RA3Recipe:
    """SmolLM2-135M (a real pretrained Llama-architecture model) on a stdlib package, on CPU.

    Slow on 2 cores (an M-step step of 4x256 tokens takes ~30 s): a quarter of the candidate
    positions, one RL step, 10 M-step steps.
    """
    estep = EStepConfig(penalty=0.05, samples=4, horizon=4, rl_steps=1, rl_snippets=4, lr=1e-6,
                        position_fraction=0.25, max_snippet_tokens=512, batch_snippets=8, seed=0)
    mstep = MStepConfig(steps=10, micro_batch_size=1, global_batch_size=4, seq_length=256, lr=1e-5,
                        warmup_steps=1, log_interval=1, split="100,0,0")
    em = EMConfig(model="smollm2", input=stdlib_corpus(corpus), run_dir=run_dir, iterations=1,
                  mstep=mstep, estep=estep)
    return RA3Recipe(em=em, engines=EngineSettings(backend="vllm", threads=2),
                     description=smollm2_135m_cpu.__doc__.splitlines()[0])
