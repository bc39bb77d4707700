"""What the E-step's generators ask the engines for, and how answers come back.

The search (`estep.search`) and the held-out reader (`estep.thinking`) are generators that yield
these requests; `estep.batch.serve` gathers the pending requests of many generators and answers
each kind with one engine call. Engines see only `rollout.base` calls; these types are the
E-step's own vocabulary on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ra3_megatron.rollout.base import ScoreGroup


@dataclass(frozen=True)
class ScoreRequest:
    engine: Literal["q", "pi"]  # q: the sampler being trained; pi: the fixed scorer
    group: ScoreGroup


@dataclass(frozen=True)
class ProbeRequest:
    """log q(tokens[i] | ids[:positions[i]]) for each i: the decisions of many lines in one pass."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class ChainRequest:
    """log pi(ids[i] | ids[:i]) for i >= start: the `<act>` option's scores for every later
    position at once (its horizon is the snippet's own next lines), valid until a thought is
    inserted. The search asks for the code as far as its window's horizons reach, and later for
    more of it (start = where the last request ended)."""

    ids: tuple[int, ...]
    start: int


@dataclass(frozen=True)
class Bundle:
    """Several requests at once; answered by a tuple of their answers, in order."""

    requests: tuple


@dataclass(frozen=True)
class SampleRequest:
    prompt: tuple[int, ...]
    n: int
    line: int  # the position's line: with the snippet id it seeds the samples
