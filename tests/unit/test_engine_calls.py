"""Rollout engines switch the Megatron CPU shims' device mode off inside their own calls, so the
E-step and GRPO never reach into the shims or torch's mode stack themselves."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ra3_megatron.rollout.base import SamplingConfig, ScoreGroup, ScoreOption, create_engine
from ra3_megatron.rollout.common import _SUSPENDED_MODES, engine_call, suspend_during_engine_calls

pytestmark = pytest.mark.unit


class Counting(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def registered_mode():
    mode = Counting()
    suspend_during_engine_calls(mode)
    try:
        yield mode
    finally:
        _SUSPENDED_MODES.remove(mode)


def test_engine_calls_run_without_the_registered_mode(tiny_model_dir, registered_mode):
    engine = create_engine("hf", model=str(tiny_model_dir))
    try:
        group = ScoreGroup((1, 2, 3), (ScoreOption((), (4, 5)),))
        with registered_mode:
            plain = torch.ones(3) + 1  # an op outside an engine: the mode sees it
            seen_outside = registered_mode.calls
            scores = engine.score_groups([group])
            engine.generate([[1, 2, 3]], SamplingConfig(n=1, max_tokens=4, temperature=0.0))
            engine.sequence_logprobs([1, 2, 3, 4], 1)
        assert seen_outside > 0 and plain.sum().item() == 6.0
        assert registered_mode.calls == seen_outside  # nothing inside the engine calls was hooked
        assert len(scores[0][0]) == 2
    finally:
        engine.close()


def test_an_unregistered_mode_or_one_pushed_above_stays_on(registered_mode):
    @engine_call
    def op():
        return torch.zeros(2) + 1

    with registered_mode:
        op()
    assert registered_mode.calls == 0  # popped for the engine call
    other = Counting()
    with other:
        op()
    assert other.calls > 0  # not registered: engines leave it alone
    with registered_mode, other:  # someone else's mode on top: neither is popped
        op()
    assert registered_mode.calls > 0 and other.calls > 1
