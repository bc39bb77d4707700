"""`ra3 mstep` argument handling, model-source resolution and the metrics/report plumbing (no Megatron run)."""

from __future__ import annotations

import json

import pytest

from ra3_megatron.cli.main import build_parser, main
from ra3_megatron.cli.mstep import config_from_args
from ra3_megatron.errors import ConfigError, InputError

pytestmark = pytest.mark.integration


def _cfg(*argv):
    argv = ["mstep", *argv]
    return config_from_args(build_parser(argv).parse_args(argv))


def test_flags_and_overrides_map_onto_config():
    cfg = _cfg(
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        "o",
        "--tp",
        "2",
        "--micro-batch-size",
        "2",
        "--latent-weight",
        "0.5",
        "--distributed-optimizer",
        "vpp=none",
        "bf16=false",
        "lr=1e-3",
        "tp=1",
    )
    assert (cfg.model, cfg.data, cfg.out) == ("m", "d", "o")
    assert cfg.tp == 1  # the override wins over the flag
    assert cfg.micro_batch_size == 2 and cfg.latent_weight == 0.5 and cfg.lr == 1e-3
    assert cfg.distributed_optimizer is True and cfg.bf16 is False and cfg.vpp is None


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "m", "--data", "d"], "missing --out"),
        (["--model", "m", "--data", "d", "--out", "o", "nosuchfield=1"], "bad override"),
        (["--model", "m", "--data", "d", "--out", "o", "steps=many"], "steps: expected int"),
        (["--model", "m", "--data", "d", "--out", "o", "resume=maybe"], "expected a boolean"),
    ],
)
def test_bad_arguments_are_config_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*argv)


def test_cli_reports_a_missing_model_as_one_line(tmp_path, capsys):
    # Fails in resolve_model before any Megatron work: exit 2 and a one-line error naming the path.
    rc = main(
        ["mstep", "--model", str(tmp_path / "nope"), "--data", "d", "--out", str(tmp_path / "run"), "steps=1"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope" in err and "model not found" in err and len(err.splitlines()) == 1


def test_resolve_model_kinds(tmp_path):
    from ra3_megatron.megatron.checkpoint import STATE_FILE
    from ra3_megatron.megatron.run_dir import resolve_model

    hf = tmp_path / "hf"
    hf.mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(hf)
    (hf / "config.json").write_text("{}")
    with pytest.raises(InputError, match="safetensors"):
        resolve_model(hf)
    (hf / "model.safetensors").write_bytes(b"")
    assert resolve_model(hf).kind == "hf"

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "iter_0000003"
    ckpt.mkdir(parents=True)
    with pytest.raises(InputError, match="no complete checkpoint"):
        resolve_model(run)
    (ckpt / STATE_FILE).write_text("{}")
    (run / "checkpoints" / "latest").write_text("iter_0000003\n")
    with pytest.raises(InputError, match="model_config"):
        resolve_model(run)
    (run / "model_config").mkdir()
    (run / "model_config" / "config.json").write_text("{}")
    src = resolve_model(run)
    assert src.kind == "checkpoint" and src.path == ckpt and src.config_dir == run / "model_config"
    assert resolve_model(ckpt).path == ckpt


def test_latest_pointer_to_incomplete_checkpoint_is_an_input_error(tmp_path):
    from ra3_megatron.megatron.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "iter_0000002").mkdir()
    (tmp_path / "latest").write_text("iter_0000002")
    with pytest.raises(InputError, match="not a complete checkpoint"):
        latest_checkpoint(tmp_path)


def test_metrics_logger_drops_records_after_the_resume_step(tmp_path, capsys):
    from ra3_megatron.megatron.metrics import MetricsLogger, read_metrics

    log = MetricsLogger(tmp_path, resume_step=0, total_steps=4, log_interval=2, enabled=True)
    for step in (1, 2, 3):
        log.log(
            {
                "step": step,
                "loss": 1.0 / step,
                "code_ce": 1.0,
                "latent_ce": float("nan"),
                "lr": 1e-3,
                "grad_norm": 0.5,
                "tokens_per_s": 100.0,
                "step_time_s": 0.1,
            }
        )
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("step     2/4 | loss 0.5000") and "latent ce n/a" in out[0]
    # A crash after step 3 with the last checkpoint at step 2: step 3 is dropped on resume.
    MetricsLogger(tmp_path, resume_step=2, total_steps=4, log_interval=2, enabled=True).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 1.0


def test_cli_reports_a_missing_dataset_before_starting_megatron(tmp_path, tiny_model_dir, capsys):
    import sys

    rc = main(
        [
            "mstep",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "nodata"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "nodata.idx" in err and "ra3 prepare" in err
    assert (
        "torch.distributed" not in sys.modules
        or not __import__("torch.distributed").distributed.is_initialized()
    )
