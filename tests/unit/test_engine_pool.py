"""EnginePool: engines are started once and handed out again with new weights; close() gives one
back; idle engines sleep while a trainer needs the accelerator; shutdown() closes them all."""

from __future__ import annotations

import pytest

from ra3_megatron.rollout.base import RolloutEngineBase
from ra3_megatron.rollout.pool import EnginePool

pytestmark = pytest.mark.unit


class Recording(RolloutEngineBase):
    def __init__(self, model):
        self.events, self.tokenizer = [("start", model)], "tok"

    def load_weights(self, model):
        self.events.append(("load", model))

    def sleep(self):
        self.events.append(("sleep",))

    def wake_up(self):
        self.events.append(("wake",))

    def close(self):
        self.events.append(("close",))

    def score_groups(self, groups):
        return [len(groups)]


def test_engines_are_reused_with_new_weights_and_closed_at_shutdown():
    pool = EnginePool(Recording)
    pi, q = pool.acquire("m1"), pool.acquire("m1")
    assert pi.score_groups([1, 2]) == [2] and pi.tokenizer == "tok"  # the engine's own API
    assert pi._engine is not q._engine and pool.started == 2
    pi.close()
    q.close()
    pool.sleep_idle()
    again = pool.acquire("m2")  # an idle engine: woken, given m2's weights
    assert pool.started == 2 and pool.reloads == 1
    assert again._engine.events[-2:] == [("wake",), ("load", "m2")]
    third = pool.acquire("m2")
    third.close()
    again.close()
    pool.shutdown()
    engines = [again._engine, third._engine]
    assert all(e.events[-1] == ("close",) for e in engines)
    assert sum(e.events.count(("close",)) for e in engines) == 2  # each closed once, at shutdown
