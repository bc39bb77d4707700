"""Subcommand registry.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Modules are named by import path and imported only when their subcommand runs, so `ra3 --help`
and `ra3 prepare` never pay for importing vLLM or Megatron.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


_REGISTRY: dict[str, Subcommand] = {}


def register(name: str, module: str, help: str) -> None:
    if name in _REGISTRY:
        raise ValueError(f"subcommand {name!r} is already registered by {_REGISTRY[name].module}")
    _REGISTRY[name] = Subcommand(name, module, help)


def subcommands() -> dict[str, Subcommand]:
    return dict(_REGISTRY)


register("demo", "ra3_megatron.cli.demo", "run the tiny end-to-end RA3 recipe on embedded data (CPU, no downloads)")
register("prepare", "ra3_megatron.cli.prepare", "code files / jsonl / parquet -> Megatron indexed dataset")
register("models", "ra3_megatron.cli.models", "build the embedded models: SmolLM2-135M from its GGUF, the tiny test model")
register("convert", "ra3_megatron.cli.convert", "HF checkpoint <-> Megatron-Core dist checkpoint (hf-to-mcore, mcore-to-hf)")
register("mstep", "ra3_megatron.cli.mstep", "M-step: latent-aware NTP on Megatron-Core (launch with torchrun for TP/PP/DP)")
register("estep", "ra3_megatron.cli.estep", "E-step: RL over latent thoughts, then infuse a corpus (jsonl shards + stats)")
register("em", "ra3_megatron.cli.em", "EM loop: E-step -> prepare -> M-step for N iterations in a resumable run dir")
register("compare", "ra3_megatron.cli.compare", "RA3 vs NTP and two controls on equal code tokens, read on held-out code (results, report, plots)")
register("plan", "ra3_megatron.cli.plan", "GPU memory per phase of a recipe (meta-device model), and a layout that fits when one does not")
register("eval", "ra3_megatron.cli.eval", "check code samples on HumanEval / MBPP / HumanEval+ / MBPP+ in the sandbox (pass@k); --model generates them first")
register("rlvr", "ra3_megatron.cli.rlvr", "GRPO RLVR: unit-test rewards in the sandbox, rollouts in vLLM, the policy in Megatron")
