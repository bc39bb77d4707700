"""`rl.sync`: which way weights go (memory or folder), and that each way delivers them."""

from __future__ import annotations

import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.rl.sync import resolve_mode, sync_weights
from ra3_megatron.rollout.base import EngineCapabilities, RolloutEngineBase

pytestmark = pytest.mark.unit


class Engine(RolloutEngineBase):
    def __init__(self, in_memory: bool):
        self.capabilities = EngineCapabilities(in_memory_weights=in_memory)
        self.got: list = []

    def update_weights(self, weights):
        self.got.append(("memory", dict(weights)))

    def load_weights(self, hf_dir):
        self.got.append(("folder", sorted(p.name for p in __import__("pathlib").Path(hf_dir).iterdir())))


class Trainer:
    def __init__(self):
        self.exports = 0

    def named_weights(self):  # a generator, as a Megatron trainer's collective export is
        yield "w", 1
        yield "b", 2

    def export_weights(self, out_dir):
        self.exports += 1
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_text("x")


class NoTensors(Trainer):
    named_weights = None


def test_auto_goes_in_memory_only_when_the_trainer_and_every_engine_can():
    assert resolve_mode("auto", Trainer(), [Engine(True), Engine(True)]) == "memory"
    assert resolve_mode("auto", Trainer(), [Engine(True), Engine(False)]) == "folder"
    assert resolve_mode("folder", Trainer(), [Engine(True)]) == "folder"
    with pytest.raises(ConfigError, match="Engine take weights only by folder"):
        resolve_mode("memory", Trainer(), [Engine(True), Engine(False)])
    with pytest.raises(ConfigError, match="choose one of auto, memory, folder"):
        resolve_mode("disk", Trainer(), [Engine(True)])


def test_memory_streams_every_engine_its_own_pass_and_writes_nothing(tmp_path):
    engines = [Engine(True), Engine(True)]
    result = sync_weights(Trainer(), engines, mode="auto", folder=tmp_path / "q")
    assert result.metrics()["sync_mode"] == "memory"
    assert [e.got for e in engines] == [[("memory", {"w": 1, "b": 2})]] * 2  # a generator per engine
    assert not any(tmp_path.iterdir())


def test_folder_is_written_once_read_by_every_engine_then_removed_unless_kept(tmp_path):
    trainer, engines = Trainer(), [Engine(False), Engine(True)]
    assert sync_weights(trainer, engines, folder=tmp_path / "q").mode == "folder"
    assert trainer.exports == 1 and [e.got for e in engines] == [[("folder", ["model.safetensors"])]] * 2
    assert not (tmp_path / "q").exists()
    sync_weights(trainer, engines, folder=tmp_path / "q", keep_folder=True)
    assert (tmp_path / "q" / "model.safetensors").exists()
    # A checkpoint the caller just wrote is only read, never rewritten or removed.
    sync_weights(trainer, engines, folder=tmp_path / "q", exported=True)
    assert trainer.exports == 2 and (tmp_path / "q").exists()
    with pytest.raises(ConfigError, match="needs a folder"):
        sync_weights(trainer, engines)


def test_a_trainer_without_named_tensors_syncs_by_folder(tmp_path):
    assert resolve_mode("auto", NoTensors(), [Engine(True)]) == "folder"


def test_transformers_engine_takes_a_trainers_tensors_like_its_folder(tiny_model_dir, tmp_path):
    """In memory and through the exported folder, the transformers engine ends with the same
    weights: the trainer's, to the bit."""
    torch = pytest.importorskip("torch")
    from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer
    from ra3_megatron.rollout.base import create_engine

    trainer = TorchPolicyTrainer(tiny_model_dir)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01)
    memory, folder = (create_engine("hf", model=str(tiny_model_dir)) for _ in range(2))
    assert sync_weights(trainer, [memory], mode="memory").mode == "memory"
    assert sync_weights(trainer, [folder], mode="folder", folder=tmp_path / "q").mode == "folder"
    want = trainer.model.state_dict()
    for engine in (memory, folder):
        got = engine.model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(Exception, match="missing"):
        memory.update_weights([("model.norm.weight", want["model.norm.weight"])])
