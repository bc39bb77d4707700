"""The comparison's configuration: one dataclass, the E-step's config inside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ra3_megatron.data.prepare import PrepareConfig
from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.megatron.trainer import MStepConfig

BASE_ARMS = ("ntp", "ra3", "shuffled", "null")
THINKING = ("ra3", "shuffled", "null")  # arms trained with thoughts (their models may think)
PASS1_DATASETS = ("humaneval", "mbpp")


def ablation_arm(penalty: float) -> str:
    return f"ra3_c{penalty:g}"


@dataclass(kw_only=True)
class CompareConfig:
    model: str  # HF dir of the base model every arm starts from
    input: str  # training corpus (anything `ra3 prepare` reads)
    heldout: str  # held-out corpus: other files than `input`
    out: str  # output dir (resumed when it exists)
    arms: tuple[str, ...] = BASE_ARMS
    penalties: tuple[float, ...] = ()  # extra RA3 arms at these penalties c (the c ablation)
    iterations: int = 1  # EM rounds of the RA3 arm(s)
    init: str = "previous"  # the RA3 M-step's start in later rounds (see em.loop)
    estep: EStepConfig = field(default_factory=EStepConfig)
    # Every arm's prepare and M-step configs (paths filled per arm; mstep.steps is the RA3 arm's,
    # the controls train on as many code tokens as it did) and their runners (see em.phases).
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    mstep: MStepConfig = field(default_factory=MStepConfig)
    prepare_runner: str = "ra3"
    mstep_runner: str = "ra3"
    nproc: int = 1  # M-step ranks
    null_text: str = "Handle the remaining cases."
    think_samples: int = 2  # readings with self-written thoughts per held-out snippet
    heldout_limit: int | None = None  # only the first N held-out snippets
    train_ce_snippets: int = 200  # training snippets read for the training-split CE
    pass1: tuple[str, ...] = PASS1_DATASETS
    pass1_limit: int | None = None  # only the first N tasks of each benchmark
    pass1_max_tokens: int = 384
    bootstrap: int = 2000  # bootstrap resamples per interval
    seed: int = 0  # shuffled arm's positions, bootstrap (the CLI passes the E-step's --seed)

    def __post_init__(self) -> None:
        self.arms = tuple(self.arms)
        self.penalties = tuple(float(c) for c in self.penalties)
        self.pass1 = tuple(self.pass1)
        unknown = [a for a in self.arms if a not in BASE_ARMS]
        if unknown:
            raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; arms are {', '.join(BASE_ARMS)}")
        if not self.arms:
            raise ConfigError("no arms to compare")
        if "ra3" not in self.arms:
            raise ConfigError("every arm is built from the ra3 arm's snippets (the controls from its thoughts): add ra3")
        bad = [d for d in self.pass1 if d not in PASS1_DATASETS]
        if bad:
            raise ConfigError(f"unknown pass@1 benchmark(s) {', '.join(bad)}; known: {', '.join(PASS1_DATASETS)}")
        if self.init not in ("previous", "base"):
            raise ConfigError(f"init must be 'previous' or 'base', got {self.init!r}")
        if self.iterations < 1 or self.think_samples < 1 or self.bootstrap < 100:
            raise ConfigError("iterations and think_samples must be >= 1, bootstrap >= 100")
        if any(c < 0 for c in self.penalties):
            raise ConfigError(f"penalties must be >= 0, got {self.penalties}")
        if not self.null_text.strip() or "\n" in self.null_text:
            raise ConfigError("null_text must be one non-empty line")

    def all_arms(self) -> list[str]:
        """Arms in training order: ra3 first (the controls are built from it), then the rest."""
        order = [a for a in ("ra3", "ntp", "shuffled", "null") if a in self.arms]
        return order + [ablation_arm(c) for c in self.penalties if ablation_arm(c) not in order]

    def identity(self) -> dict[str, Any]:
        """What must not change when a run resumes."""
        body = asdict(self)
        body.pop("out")
        body["prepare"].pop("progress")
        return body
