"""RA3 M-step hooks for Megatron-LM's `pretrain()` (megatron.training, Megatron-LM >= core 0.17).

Train with Megatron-LM's own loop, model builder and arguments; only the data and the loss are
RA3's: the prepared dataset (with token classes) and the latent-aware CE (same math as `ra3 mstep`,
ra3_megatron.core.losses.latent_aware_ce).

    # pretrain_ra3.py, next to Megatron-LM's pretrain_gpt.py
    from functools import partial
    from gpt_builders import gpt_builder                      # Megatron-LM's own
    from model_provider import model_provider
    from ra3_megatron.integrations import megatron_lm as ra3

    if __name__ == "__main__":
        ra3.launch_pretrain(partial(model_provider, gpt_builder))

`launch_pretrain` calls `pretrain` the way the installed Megatron-LM takes it (read from its
signature): up to core 0.17 `pretrain(provider, model_provider, model_type, forward_step,
extra_args_provider=...)`; from 0.18 the arguments are parsed first into a config container,
`pretrain(cfg, provider, model_provider, model_type, forward_step)`; from 0.19 the model config is
built from the arguments too and `model_provider` became optional, `pretrain(cfg, provider,
model_type, forward_step)` (see `pretrain_gpt.py` at core_v0.17.0 / core_v0.18.0 / core_v0.19.0).

    torchrun ... pretrain_ra3.py --data-path PREFIX --tokenizer-type HuggingFaceTokenizer \\
        --tokenizer-model HF_DIR --calculate-per-token-loss --ra3-latent-weight 1.0 ...

`--calculate-per-token-loss` makes TP/PP/DP agree exactly (the loss returns sums and counts).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.megatron.forward_step import latent_ce_from_output, run_model, to_device


def add_ra3_args(parser):
    """`extra_args_provider` for pretrain(): the RA3 options."""
    group = parser.add_argument_group(title="ra3")
    group.add_argument("--ra3-latent-weight", type=float, default=1.0,
                       help="lambda_latent: weight of the thought tokens' CE (1.0 = plain NTP)")
    return parser


def loss_func(batch: dict, output_tensor, *, latent_weight: float = 1.0):
    """(loss_sum, num_tokens, {name: [sum, count]}): Megatron-LM averages the pairs over DP."""
    return latent_ce_from_output(batch, output_tensor, latent_weight=latent_weight)


def forward_step_with(data_iterator: Iterator[dict] | None, model, *, latent_weight: float):
    """The forward step with explicit options (testable without megatron.training).

    Megatron-LM may hand middle pipeline stages no iterator: they run on the received activations.
    """
    batch: dict[str, Any] = {"tokens": None, "labels": None, "position_ids": None}
    if data_iterator is not None:
        batch = to_device(next(data_iterator))
    if batch["tokens"] is None:
        output = model(None, None, None, labels=None)
    else:
        output = run_model(model, batch)
    return output, partial(loss_func, batch, latent_weight=latent_weight)


def forward_step(data_iterator, model, return_schedule_plan: bool = False):
    """`forward_step_func` for pretrain(); reads --ra3-latent-weight from Megatron-LM's args."""
    from megatron.training import get_args

    if return_schedule_plan:
        raise ConfigError("the RA3 forward step does not build MoE schedule plans (overlap_moe_expert_parallel_comm)")
    return forward_step_with(data_iterator, model, latent_weight=getattr(get_args(), "ra3_latent_weight", 1.0))


def build_datasets(*, data_path: list[str] | str, seq_length: int, tokenizer_dir: str,
                   num_samples: list[int], seed: int, split: str):
    """(train, valid, test) RA3 datasets for Megatron-LM's arguments (a single prefix only)."""
    paths = [data_path] if isinstance(data_path, str) else list(data_path or [])
    if len(paths) != 1:
        raise ConfigError(f"--data-path must name exactly one RA3 dataset prefix, got {paths}")
    from ra3_megatron.data import build_mstep_datasets

    datasets = build_mstep_datasets(
        paths[0], seq_length=seq_length, tokenizer_dir=tokenizer_dir, train_samples=int(num_samples[0]),
        valid_samples=int(num_samples[1]), seed=seed, split=split,
    )
    datasets = tuple(datasets) + (None,) * (3 - len(datasets))
    return datasets[:3]


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    """`train_valid_test_dataset_provider` for pretrain(). Under virtual pipelining Megatron-LM
    passes the model chunk's `vp_stage`; every rank builds its own loader whatever the stage."""
    del vp_stage
    from megatron.training import get_args

    args = get_args()
    return build_datasets(
        data_path=args.data_path, seq_length=args.seq_length, tokenizer_dir=args.tokenizer_model,
        num_samples=list(train_val_test_num_samples), seed=args.seed, split=args.split,
    )


# Every rank builds and reads its own loader: the batches carry token_classes, which Megatron-LM's
# TP broadcast (get_batch_on_this_tp_rank) would drop.
train_valid_test_datasets_provider.is_distributed = True


def launch_pretrain(model_provider=None, *, model_type=None, pretrain=None, store=None) -> None:
    """Train with Megatron-LM's `pretrain` and RA3's data and loss, for core 0.17, 0.18 and 0.19+.

    `pretrain` defaults to `megatron.training.pretrain`; `model_type` to
    `ModelType.encoder_or_decoder`. `model_provider` may be None from 0.19 on (Megatron-LM then
    builds the GPT model from its arguments).
    """
    import inspect

    if pretrain is None:
        from megatron.training import pretrain
    if model_type is None:
        from megatron.core.enums import ModelType

        model_type = ModelType.encoder_or_decoder
    params = list(inspect.signature(pretrain).parameters)
    provider, extra = train_valid_test_datasets_provider, {} if store is None else {"store": store}
    if params[0] == "train_valid_test_dataset_provider":  # <= 0.17: pretrain parses the arguments
        if model_provider is None:
            raise ConfigError("this Megatron-LM's pretrain() needs a model_provider")
        pretrain(provider, model_provider, model_type, forward_step, extra_args_provider=add_ra3_args, **extra)
        return
    if params[0] != "cfg_container":
        raise ConfigError(f"unknown megatron.training.pretrain signature {params[:5]}: expected core 0.17-0.19")
    from megatron.training import argument_utils
    from megatron.training.arguments import parse_and_validate_args

    args = parse_and_validate_args(extra_args_provider=add_ra3_args)
    if params[2] == "model_provider":  # 0.18: the model provider stays positional
        if model_provider is None:
            raise ConfigError("this Megatron-LM's pretrain() needs a model_provider")
        cfg = argument_utils.pretrain_cfg_container_from_args(args)
        pretrain(cfg, provider, model_provider, model_type, forward_step, **extra)
        return
    cfg = argument_utils.pretrain_cfg_container_from_args(args, argument_utils.gpt_config_from_args(args))
    if model_provider is not None:
        extra["model_provider"] = model_provider
    pretrain(cfg, provider, model_type, forward_step, **extra)


def megatron_lm_available() -> bool:
    try:
        import megatron.training  # noqa: F401
    except Exception:
        return False
    return True
