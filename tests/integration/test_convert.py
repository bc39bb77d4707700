"""`ra3 convert` round trip: HF -> Megatron dist checkpoint -> HF is bit-exact (every tensor
torch.equal) through the `ra3` CLI and tools/convert_checkpoint.py, saved at TP=2 and read back at
TP=1; the result loads in transformers with the original logits. Bad inputs: exit code 2 and a
one-line reason. (Every model variant x layout is round-tripped through dist checkpoints in
tests/distributed/test_logits_parallel.py, inside its single torchrun launch.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RA3 = [sys.executable, "-m", "ra3_megatron.cli.main", "convert"]
TOOL = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py")]


def _run(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _ok(cmd):
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def _assert_same_checkpoint(a: Path, b: Path):
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(x) == sorted(y)
    unequal = [k for k in x if x[k].dtype != y[k].dtype or not x[k].equal(y[k])]
    assert not unequal, unequal[:5]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ca, cb = json.loads((a / "config.json").read_text()), json.loads((b / "config.json").read_text())
    for key in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
        "rope_parameters",
        "rms_norm_eps",
    ):
        assert ca.get(key) == cb.get(key), key


def _same_logits(a: Path, b: Path):
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.randint(2, 8000, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la = AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32)(ids).logits
        lb = AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32)(ids).logits
    assert torch.equal(la, lb)


@pytest.fixture(scope="module")
def roundtrip(tiny_model_dir, tmp_path_factory):
    """`ra3 convert hf-to-mcore --tp 2` (relaunched under torchrun, 2 gloo ranks), then
    tools/convert_checkpoint.py mcore-to-hf at TP=1: the dist checkpoint reshards on load."""
    tmp = tmp_path_factory.mktemp("convert")
    mcore, back = tmp / "mcore", tmp / "hf"
    _ok(RA3 + ["hf-to-mcore", "--hf", str(tiny_model_dir), "--out", str(mcore), "--tp", "2"])
    _ok(TOOL + ["mcore-to-hf", "--mcore", str(mcore), "--out", str(back)])
    return tiny_model_dir, mcore, back


def test_cli_roundtrip_is_bit_exact(roundtrip):
    src, mcore, back = roundtrip
    meta = json.loads((mcore / "ra3_model.json").read_text())
    assert meta["saved_with"]["tp"] == 2 and (mcore / "metadata.json").exists()
    assert (mcore / "tokenizer" / "tokenizer.json").exists()
    _assert_same_checkpoint(src, back)
    _same_logits(src, back)


VLLM_CHECK = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(model=sys.argv[1], dtype="float32", distributed_executor_backend="uni", enforce_eager=True,
          block_size=32, max_model_len=128, kv_cache_memory_bytes=64 * 2**20, seed=0)
ids = json.loads(sys.argv[2])
out = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0))
print("RESULT", json.dumps([next(iter(d.values())).logprob for d in out[0].prompt_logprobs[1:]]))
"""


@pytest.mark.slow
def test_converted_checkpoint_loads_in_vllm(roundtrip):
    import torch
    from transformers import AutoModelForCausalLM

    src, _, back = roundtrip
    ids = torch.randint(2, 8000, (1, 24), generator=torch.Generator().manual_seed(1))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_CHECK, str(back), json.dumps(ids[0].tolist())],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    got = torch.tensor(json.loads(proc.stdout.split("RESULT", 1)[1]))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(ids).logits[0, :-1]
    ref = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    assert (got - ref).abs().max().item() < 1e-3


def test_bad_inputs_exit_2_with_reason(tiny_model_dir, tmp_path, capsys):
    from ra3_megatron.cli.main import main

    def err(argv):
        assert main(["convert", *argv]) == 2
        return capsys.readouterr().err

    assert "ra3_model.json" in err(["mcore-to-hf", "--mcore", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "config.json" in err(["hf-to-mcore", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "y")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert "not empty" in err(["hf-to-mcore", "--hf", str(tiny_model_dir), "--out", str(tmp_path / "full")])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "ra3_model.json").write_text('{"format": 1,\n  oops')
    assert "ra3_model.json:2: invalid JSON" in err(
        ["mcore-to-hf", "--mcore", str(tmp_path / "m"), "--out", str(tmp_path / "z")]
    )
    # Checked before the torchrun relaunch: one clear line, no traceback from every rank.
    assert "config.json: missing" in err(
        ["hf-to-mcore", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "v"), "--tp", "2"]
    )
    assert "--tp and --pp" in err(
        ["hf-to-mcore", "--hf", str(tiny_model_dir), "--out", str(tmp_path / "w"), "--tp", "0"]
    )
