"""RA3 M-step hooks for Megatron-Bridge: `pretrain(config, forward_step_func)`.

The forward step has Bridge's signature `(state, data_iterator, model)` and returns
`(output, loss_fn)`, `loss_fn(output) -> (loss_sum, num_tokens, {name: [sum, count]})`: the same
latent-aware CE as `ra3 mstep` (ra3_megatron.core.losses.latent_aware_ce). The dataset provider
plugs RA3's prepared dataset (with token classes) into `ConfigContainer.dataset`.

    from megatron.bridge.recipes.llama import llama32_1b_pretrain_config
    from megatron.bridge.training.pretrain import pretrain
    from ra3_megatron.integrations.megatron_bridge import make_forward_step, ra3_dataset_provider

    cfg = llama32_1b_pretrain_config()
    cfg.dataset = ra3_dataset_provider(prefix="data/infused", tokenizer_dir="hf/llama32-1b",
                                       seq_length=cfg.model.seq_length)
    cfg.model.calculate_per_token_loss = True
    pretrain(cfg, make_forward_step(latent_weight=1.0))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from ra3_megatron.megatron.forward_step import latent_ce_from_output, run_model, to_device


def loss_fn(batch: dict, output_tensor, *, latent_weight: float = 1.0):
    return latent_ce_from_output(batch, output_tensor, latent_weight=latent_weight)


def _forward_step(state, data_iterator: Iterator[dict] | None, model, return_schedule_plan: bool = False,
                  *, latent_weight: float):
    del state  # Bridge's GlobalState: timers and config are not needed by this step
    if return_schedule_plan:
        raise ValueError("the RA3 forward step does not build MoE schedule plans")
    batch: dict[str, Any] = {"tokens": None, "labels": None}
    if data_iterator is not None:
        batch = to_device(next(data_iterator))
    output = model(None, None, None, labels=None) if batch["tokens"] is None else run_model(model, batch)
    return output, partial(loss_fn, batch, latent_weight=latent_weight)


def make_forward_step(latent_weight: float = 1.0):
    """A Bridge `forward_step_func(state, data_iterator, model, return_schedule_plan=False)`."""
    return partial(_forward_step, latent_weight=latent_weight)


forward_step = make_forward_step(1.0)  # plain NTP on the infused text (lambda_latent = 1)


@dataclass(kw_only=True)
class RA3DatasetSpec:
    """What the provider needs; Bridge supplies the sample counts at build time."""

    prefix: str
    tokenizer_dir: str
    seq_length: int
    seed: int = 1234
    split: str = "98,2,0"
    # Bridge's DataloaderConfig defaults to None, which its loader refuses ("None dataloader type is
    # not supported", megatron/bridge/data/samplers.py); "single" is Megatron's in-order pretraining
    # sampler, which resumes from the consumed-sample count like `ra3 mstep`.
    dataloader_type: str = "single"

    def build_datasets(self, context) -> tuple[Any, Any, Any]:
        """Bridge's DatasetProvider.build_datasets(DatasetBuildContext) -> (train, valid, test)."""
        from ra3_megatron.integrations.megatron_lm import build_datasets

        return build_datasets(
            data_path=self.prefix, seq_length=self.seq_length, tokenizer_dir=self.tokenizer_dir,
            num_samples=[context.train_samples, context.valid_samples, context.test_samples],
            seed=self.seed, split=self.split,
        )


def ra3_dataset_provider(**spec: Any):
    """A `ConfigContainer.dataset` value: a Bridge DatasetProvider when Bridge imports, else the spec.

    Bridge calls `build_datasets(context)`; its DataloaderConfig fields (num_workers, ...) keep
    their defaults and can be set on the returned object.
    """
    try:
        from megatron.bridge.training.config import DatasetProvider
    except Exception:  # Bridge absent (needs Python 3.12 + Transformer Engine): the duck-typed spec
        return RA3DatasetSpec(**spec)

    @dataclass(kw_only=True)
    class RA3DatasetProvider(DatasetProvider, RA3DatasetSpec):
        dataloader_type: str = "single"  # declared here: DatasetProvider's None comes later in the MRO

        def build_datasets(self, context):
            return RA3DatasetSpec.build_datasets(self, context)

    return RA3DatasetProvider(**spec)


def bridge_available() -> bool:
    try:
        import megatron.bridge  # noqa: F401
    except Exception:
        return False
    return True
