"""One engine for pi and q (rollout.shared): a role's weights are swapped in only when its turn
comes, a role's new weights never touch the other's, and the engine closes with its last role."""

from __future__ import annotations

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.rollout.base import EngineCapabilities, RolloutEngineBase
from ra3_megatron.rollout.settings import EngineSettings
from ra3_megatron.rollout.shared import SharedEngine, shared_engine_factory

pytestmark = pytest.mark.unit


NAMES = ["pi", "q0", "q1", "pi2"]


def weights(name: str):
    import torch

    return [("w", torch.tensor(NAMES.index(name)))]


class Recorder(RolloutEngineBase):
    """An engine whose 'weights' are a label; it answers with the label it holds."""

    capabilities = EngineCapabilities(in_memory_weights=True)
    tokenizer = None

    def __init__(self, label: str):
        self.label, self.loads, self.closed = label, [], False

    def update_weights(self, weights):
        self.label = NAMES[int(dict(weights)["w"])]
        self.loads.append(self.label)

    def score_groups(self, groups):
        return [self.label] * len(groups)

    def generate(self, prompts, config=None):
        return self.score_groups(prompts)

    def close(self):
        self.closed = True


def test_roles_swap_only_on_a_change_of_turn(monkeypatch):
    started = []
    dirs = {"pi_dir": weights("pi"), "q_dir": weights("q0"), "pi2": weights("pi2")}
    monkeypatch.setattr("ra3_megatron.rollout.shared.read_weights", lambda d: dirs[d])
    make = shared_engine_factory(lambda d: started.append(Recorder(NAMES[int(dict(dirs[d])["w"])])) or started[-1])
    pi, q = make("pi_dir"), make("q_dir")
    engine = started[0]
    assert len(started) == 1 and engine.loads == []  # started with pi's weights: nothing loaded yet
    assert pi.score_groups([1, 2]) == ["pi", "pi"] and engine.loads == []
    assert q.score_groups([]) == [] and q.probe_many([]) == [] and engine.loads == []  # nothing to do: no swap
    assert pi.holds_weights and not q.holds_weights
    assert q.generate([1], None) == ["q0"] and q.generate([1], None) == ["q0"] and engine.loads == ["q0"]
    q.update_weights(weights("q1"))  # RL's sync: q's set changes, the engine takes it at once
    assert engine.loads == ["q0", "q1"] and pi.score_groups([1]) == ["pi"] and q.generate([1], None) == ["q1"]
    assert q.swaps == pi.swaps == 4 and engine.loads == ["q0", "q1", "pi", "q1"]
    pi.load_weights("pi2")  # the next EM round's pi
    assert pi.score_groups([1]) == ["pi2"] and q.generate([1], None) == ["q1"]
    pi.close()
    assert not engine.closed
    q.close()
    assert engine.closed
    make("pi_dir")
    assert len(started) == 2  # every role closed: the next call starts a new engine


def test_engines_that_cannot_take_weights_in_memory_are_refused():
    class FolderOnly(Recorder):
        capabilities = EngineCapabilities(in_memory_weights=False)

    with pytest.raises(ConfigError, match="in memory"):
        SharedEngine(FolderOnly("pi"))
    with pytest.raises(ConfigError, match="rollout TP 1"):
        EngineSettings(backend="vllm", share_pi_q=True, rollout_tp=2)
