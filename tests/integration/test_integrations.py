"""Megatron-LM / Megatron-Bridge adapters: their math on CPU with a fake model, plus contract tests.

The contract tests run only where megatron.training (Megatron-LM, Python >= 3.12) or
megatron.bridge import, and skip cleanly elsewhere.
"""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")

from ra3_megatron.core.losses import latent_aware_ce, token_cross_entropy  # noqa: E402
from ra3_megatron.integrations import megatron_bridge, megatron_lm  # noqa: E402

pytestmark = pytest.mark.integration

V = 13


class FakeGPT(torch.nn.Module):
    """GPTModel's calling convention: (tokens, position_ids, attention_mask, labels=) -> CE [b, s]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, V)
        self.calls = []

    def forward(self, tokens, position_ids, attention_mask, labels=None):
        self.calls.append((tokens, position_ids, attention_mask, labels))
        if tokens is None:  # a middle pipeline stage: hidden states from the previous stage
            return torch.zeros(1)
        return token_cross_entropy(self.emb(tokens), labels)


def _batch():
    g = torch.Generator().manual_seed(1)
    return {
        "tokens": torch.randint(0, V, (2, 6), generator=g),
        "labels": torch.randint(0, V, (2, 6), generator=g),
        "loss_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float),
        "position_ids": torch.arange(6).expand(2, 6),
        "token_classes": torch.tensor([[0, 1, 1, 0, 1, 1], [0, 0, 0, 1, 1, 0]]),
    }


def _expected(model, batch, weight):
    ce = token_cross_entropy(model.emb(batch["tokens"]), batch["labels"])
    return latent_aware_ce(ce, batch["token_classes"], batch["loss_mask"], latent_weight=weight)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_megatron_lm_forward_step_math(weight):
    model, batch = FakeGPT(), _batch()
    output, loss_func = megatron_lm.forward_step_with(iter([batch]), model, latent_weight=weight)
    loss, num_tokens, report = loss_func(output)
    exp = _expected(model, batch, weight)
    assert loss.item() == pytest.approx(exp.loss_sum.item(), rel=1e-6)
    assert int(num_tokens) == 10
    assert report["code ce"].tolist() == pytest.approx(exp.stats["code ce"].tolist(), rel=1e-6)
    assert report["latent ce"][1].item() == 4  # latent tokens under the mask: 2 + 2
    loss.backward()
    assert model.emb.weight.grad.abs().sum() > 0


def test_megatron_lm_middle_stage_without_iterator():
    model = FakeGPT()
    output, _ = megatron_lm.forward_step_with(None, model, latent_weight=1.0)
    assert model.calls[-1] == (None, None, None, None) and output.shape == (1,)


def test_bridge_forward_step_signature_and_math():
    model, batch = FakeGPT(), _batch()
    step = megatron_bridge.make_forward_step(latent_weight=0.5)
    params = list(inspect.signature(step).parameters)
    assert params[:3] == ["state", "data_iterator", "model"]
    output, loss_fn = step(object(), iter([batch]), model)
    loss, num_tokens, report = loss_fn(output)
    exp = _expected(model, batch, 0.5)
    assert loss.item() == pytest.approx(exp.loss_sum.item(), rel=1e-6)
    assert int(num_tokens) == int(exp.num_tokens)
    assert set(report) >= {"lm loss", "code ce", "latent ce"}
    assert all(v.shape == (2,) for v in report.values())  # [sum, count]: what Bridge/LM average


def test_dataset_provider_spec_passes_sample_counts(monkeypatch):
    seen = {}

    def fake_build(prefix, **kw):
        seen.update(prefix=prefix, **kw)
        return ("train", "valid")

    import ra3_megatron.data as data

    monkeypatch.setitem(vars(data), "build_mstep_datasets", fake_build)  # no lazy megatron import
    spec = megatron_bridge.ra3_dataset_provider(prefix="p", tokenizer_dir="tok", seq_length=64)

    class Ctx:
        train_samples, valid_samples, test_samples = 80, 8, 0

    assert spec.build_datasets(Ctx()) == ("train", "valid", None)
    assert seen == dict(
        prefix="p",
        seq_length=64,
        tokenizer_dir="tok",
        train_samples=80,
        valid_samples=8,
        seed=1234,
        split="98,2,0",
    )
    assert megatron_lm.train_valid_test_datasets_provider.is_distributed is True


def test_bridge_provider_names_a_dataloader_type_bridge_accepts(monkeypatch):
    """Bridge's DataloaderConfig defaults dataloader_type to None, which its loader refuses."""
    import sys
    import types
    from dataclasses import dataclass

    @dataclass(kw_only=True)
    class DatasetProvider:  # the fields of Bridge 0.6's DataloaderConfig that matter here
        dataloader_type: str | None = None
        num_workers: int = 2

    config = types.ModuleType("megatron.bridge.training.config")
    config.DatasetProvider = DatasetProvider
    monkeypatch.setitem(sys.modules, "megatron.bridge.training.config", config)
    provider = megatron_bridge.ra3_dataset_provider(prefix="p", tokenizer_dir="t", seq_length=8)
    assert isinstance(provider, DatasetProvider)
    assert provider.dataloader_type in ("single", "cyclic", "batch") and provider.num_workers == 2
    assert megatron_bridge.RA3DatasetSpec(prefix="p", tokenizer_dir="t", seq_length=8).dataloader_type == "single"


def test_megatron_lm_rejects_blends():
    from ra3_megatron.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one"):
        megatron_lm.build_datasets(
            data_path=["0.5", "a", "0.5", "b"],
            seq_length=8,
            tokenizer_dir="t",
            num_samples=[1, 1, 0],
            seed=0,
            split="1,0,0",
        )


@pytest.mark.skipif(
    not megatron_lm.megatron_lm_available(), reason="megatron.training (Megatron-LM) not importable"
)
def test_contract_megatron_lm_pretrain_accepts_hooks():
    from megatron.training import get_args  # noqa: F401
    from megatron.training.training import pretrain

    params = list(inspect.signature(pretrain).parameters)
    assert params[:5] in (_PRETRAIN_SIGNATURES["0.17"][:5], _PRETRAIN_SIGNATURES["0.18"][:5],
                          _PRETRAIN_SIGNATURES["0.19"][:5]), params
    fs = list(inspect.signature(megatron_lm.forward_step).parameters)
    assert fs[:2] == ["data_iterator", "model"]


@pytest.mark.skipif(not megatron_bridge.bridge_available(), reason="megatron.bridge not importable")
def test_contract_bridge_pretrain_accepts_hooks():
    from megatron.bridge.training.config import DatasetProvider
    from megatron.bridge.training.pretrain import pretrain

    params = list(inspect.signature(pretrain).parameters)
    assert params[:2] == ["config", "forward_step_func"]
    provider = megatron_bridge.ra3_dataset_provider(prefix="p", tokenizer_dir="t", seq_length=8)
    assert isinstance(provider, DatasetProvider)


# The leading parameters of megatron.training.pretrain in Megatron-LM core_v0.17.0 / 0.18.0 / 0.19.0.
_PRETRAIN_SIGNATURES = {
    "0.17": ["train_valid_test_dataset_provider", "model_provider", "model_type", "forward_step_func",
             "process_non_loss_data_func", "extra_args_provider", "args_defaults", "store"],
    "0.18": ["cfg_container", "train_valid_test_dataset_provider", "model_provider", "model_type",
             "forward_step_func", "process_non_loss_data_func", "store"],
    "0.19": ["cfg_container", "train_valid_test_dataset_provider", "model_type", "forward_step_func",
             "model_provider", "process_non_loss_data_func", "store"],
}


def _fake_pretrain(version: str, calls: list):
    """A function with that version's parameter names that records how it was called."""
    params = ", ".join(f"{p}=None" if i >= (4 if version == "0.19" else 5 if version == "0.18" else 4) else p
                       for i, p in enumerate(_PRETRAIN_SIGNATURES[version]))
    namespace = {"calls": calls}
    exec(f"def pretrain({params}):\n    calls.append(dict(locals()))\n", namespace)
    return namespace["pretrain"]


@pytest.mark.parametrize("version", sorted(_PRETRAIN_SIGNATURES))
def test_launch_pretrain_calls_each_megatron_lm_signature(monkeypatch, version):
    import sys
    import types

    parsed = {}
    arguments = types.ModuleType("megatron.training.arguments")
    arguments.parse_and_validate_args = lambda extra_args_provider=None: parsed.setdefault("args", (
        "ARGS", extra_args_provider))
    argument_utils = types.ModuleType("megatron.training.argument_utils")
    argument_utils.gpt_config_from_args = lambda args: ("MODEL_CFG", args)
    argument_utils.pretrain_cfg_container_from_args = lambda args, model_cfg=None: ("CFG", args, model_cfg)
    training = types.ModuleType("megatron.training")
    training.arguments, training.argument_utils = arguments, argument_utils
    for name, mod in [("megatron.training", training), ("megatron.training.arguments", arguments),
                      ("megatron.training.argument_utils", argument_utils)]:
        monkeypatch.setitem(sys.modules, name, mod)
    calls = []
    model_provider = object()
    megatron_lm.launch_pretrain(model_provider, model_type="GPT", pretrain=_fake_pretrain(version, calls))
    (call,) = calls
    assert call["train_valid_test_dataset_provider"] is megatron_lm.train_valid_test_datasets_provider
    assert call["forward_step_func"] is megatron_lm.forward_step
    assert call["model_type"] == "GPT" and call["model_provider"] is model_provider
    if version == "0.17":
        assert call["extra_args_provider"] is megatron_lm.add_ra3_args
    else:
        assert parsed["args"] == ("ARGS", megatron_lm.add_ra3_args)  # RA3's options parsed first
        model_cfg = None if version == "0.18" else ("MODEL_CFG", parsed["args"])
        assert call["cfg_container"] == ("CFG", parsed["args"], model_cfg)
    # Megatron-LM passes the chunk's vp_stage under virtual pipelining
    assert "vp_stage" in inspect.signature(megatron_lm.train_valid_test_datasets_provider).parameters


def test_launch_pretrain_refuses_an_unknown_signature():
    from ra3_megatron.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown megatron.training.pretrain signature"):
        megatron_lm.launch_pretrain(object(), model_type="GPT", pretrain=lambda config, fn: None)
