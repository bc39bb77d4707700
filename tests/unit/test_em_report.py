"""The EM report's M-step figures: latent CE falls back to the last step that saw latent tokens."""

from __future__ import annotations

import json

import pytest

from ra3_megatron.em.loop import _mstep_metrics

pytestmark = pytest.mark.unit


def _write(tmp_path, rows):
    d = tmp_path / "mstep"
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_latent_ce_from_last_step_with_latent_tokens(tmp_path):
    rows = [{"step": 1, "code_ce": 5.0, "latent_ce": 4.0, "latent_tokens": 7},
            {"step": 2, "code_ce": 4.5, "latent_ce": 3.5, "latent_tokens": 3},
            {"step": 3, "code_ce": 4.0, "latent_ce": float("nan"), "latent_tokens": 0}]
    m = _mstep_metrics(_write(tmp_path, rows))
    assert m["code_ce"] == 4.0 and m["step"] == 3
    assert m["latent_ce"] == 3.5 and m["latent_ce_step"] == 2


def test_last_record_kept_when_it_has_latent_tokens(tmp_path):
    rows = [{"step": 1, "latent_ce": 4.0, "latent_tokens": 7}, {"step": 2, "latent_ce": 3.0, "latent_tokens": 1}]
    m = _mstep_metrics(_write(tmp_path, rows))
    assert m["latent_ce"] == 3.0 and "latent_ce_step" not in m


def test_no_metrics_gives_empty(tmp_path):
    (tmp_path / "mstep").mkdir()
    assert _mstep_metrics(tmp_path) == {}
