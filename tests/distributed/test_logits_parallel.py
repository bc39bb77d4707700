"""Megatron logits == transformers logits (float32, max |diff| <= 1e-4) at TP=1, TP=2, PP=2 and
PP=2 x VPP=2, for the tiny Llama (untied and tied), a tiny Qwen2 with qkv bias and tied embeddings,
and a tiny Llama with llama3 rope scaling; plus the HF export under each layout (bit-exact), the
dist checkpoint saved under one layout and loaded under another (bit-exact), and the CPU shims. All layouts run in ONE torchrun launch of 2 gloo ranks (1 torch thread each).
SmolLM2-135M (TP=1, PP=2) is a second launch, marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"
TOL = 1e-4


def _variants():
    spec = importlib.util.spec_from_file_location("tiny_variants", WORKERS / "tiny_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_worker(cases: list[dict], input_ids, out: Path, timeout: int = 600) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save(input_ids, out / "input_ids.pt")
    spec = {"input_ids": str(out / "input_ids.pt"), "out": str(out), "cases": cases}
    (out / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKERS / "logits_worker.py"),
        str(out / "spec.json"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def hf_logits(hf_dir, input_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids).logits


LAYOUTS = {"tp1": dict(tp=1, pp=1), "tp2": dict(tp=2, pp=1), "pp2": dict(tp=1, pp=2)}
MODELS = ("llama", "llama_tied", "qwen2", "llama3rope")
CASES = [f"{m}-{lay}" for m in MODELS for lay in LAYOUTS] + ["llama3rope-pp2vpp2"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer):
    from ra3_megatron.models.tiny import tiny_model_dir

    base = tmp_path_factory.mktemp("variants")
    v = _variants()
    vocab = len(tiny_tokenizer)
    return {
        "llama": tiny_model_dir(),
        "llama_tied": tiny_model_dir(tie_word_embeddings=True),
        "qwen2": v.qwen2_tiny_dir(base / "qwen2", Path(tiny_tokenizer_dir), vocab, tie=True),
        "llama3rope": v.llama3_rope_tiny_dir(base / "llama3rope", Path(tiny_tokenizer_dir), vocab, layers=4),
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dirs):
    import torch

    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, 8000, (2, 48), generator=gen)
    reload_from = {"tp1": None, "tp2": "tp1", "pp2": "tp2"}  # each layout reloads another's checkpoint
    cases = [
        dict(
            name=f"{m}-{lay}",
            hf_dir=str(tiny_dirs[m]),
            reload_from=reload_from[lay] and f"{m}-{reload_from[lay]}",
            **kw,
        )
        for m in MODELS
        for lay, kw in LAYOUTS.items()
    ]
    cases.append(
        dict(
            name="llama3rope-pp2vpp2",
            hf_dir=str(tiny_dirs["llama3rope"]),
            tp=1,
            pp=2,
            vpp=2,
            reload_from="llama3rope-pp2",
        )
    )
    out = tmp_path_factory.mktemp("logits")
    run_worker(cases, input_ids, out)
    refs = {m: hf_logits(d, input_ids) for m, d in tiny_dirs.items()}
    return out, refs


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(tiny_run, case):
    import torch

    out, refs = tiny_run
    got = torch.load(out / f"{case}.pt")
    ref = refs[case.split("-")[0]]
    assert got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    print(f"{case}: max |logit diff| {diff:.2e}")
    assert diff <= TOL, f"{case}: max |logit diff| {diff:.3g} > {TOL}"


@pytest.mark.parametrize("case", CASES)
def test_export_is_bit_exact(tiny_run, case):
    out, _ = tiny_run
    result = json.loads((out / f"{case}.json").read_text())
    assert result["names_equal"] and result["all_equal"], result
    if not case.endswith("tp1"):
        reload = result["reload"]  # another layout's dist checkpoint, loaded into a random model
        assert not reload["equal_before"] and reload["names_equal"] and reload["all_equal"], reload
        # perform_initialization=False must still mark the TP-split weights (grad norm, clipping).
        assert result["tp_attrs_match"]
    if case.startswith("llama3rope"):
        assert result["inv_freq_max_diff"] is not None and result["inv_freq_max_diff"] < 1e-9, result


def test_cpu_shims(tiny_run):
    out, _ = tiny_run
    shims = json.loads((out / "shims.json").read_text())
    assert shims == {
        "applied_again": True,
        "current_device": "cpu",
        "cuda_zeros_device": "cpu",
        "dot_cuda_device": "cpu",
        "pinned_ok": "cpu",
        "type_name": "torch.cuda.FloatTensor",
        "fork_restores_default": True,
        "fork_advances_stream": True,
        "synchronize": True,
    }


@pytest.mark.slow
def test_smollm2_logits(tmp_path):
    import torch

    from ra3_megatron.models.smollm2 import smollm2_dir

    d = smollm2_dir()
    input_ids = torch.randint(2, 49000, (2, 24), generator=torch.Generator().manual_seed(0))
    cases = [dict(name=f"smollm2-{lay}", hf_dir=str(d), **LAYOUTS[lay]) for lay in ("tp1", "pp2")]
    run_worker(cases, input_ids, tmp_path)
    ref = hf_logits(d, input_ids)
    for case in cases:
        got = torch.load(tmp_path / f"{case['name']}.pt")
        diff = (got - ref).abs().max().item()
        print(f"{case['name']}: max |logit diff| {diff:.2e}")
        assert diff <= TOL, f"{case['name']}: max |logit diff| {diff:.3g}"
        assert json.loads((tmp_path / f"{case['name']}.json").read_text())["all_equal"]
