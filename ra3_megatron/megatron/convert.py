"""HF checkpoint <-> Megatron-Core dist checkpoint (torch_dist), for Llama-family and Qwen2 models.

The Megatron checkpoint is a directory written by `megatron.core.dist_checkpointing.save` from
the model's `sharded_state_dict()` (so it loads under any TP/PP), plus `ra3_model.json` (the HF
config and how it was saved) and `tokenizer/` (the HF tokenizer files, for the way back).

    ra3 convert hf-to-mcore --hf HF_DIR --out MCORE_DIR [--tp 2 --pp 1]
    ra3 convert mcore-to-hf --mcore MCORE_DIR --out HF_DIR

With tp*pp > 1 and no torchrun around it, the conversion relaunches itself under torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ra3_megatron.errors import ConfigError, InputError

META_FILE = "ra3_model.json"
TOKENIZER_SUBDIR = "tokenizer"
FORMAT = "ra3_megatron.mcore/1"
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _refuse_non_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: output directory is not empty")


def model_sharded_state_dict(chunks) -> dict:
    """Megatron-LM's layout: {"model": ...} or {"model0": ..., "model1": ...} with VPP."""
    from ra3_megatron.megatron.convert_weights import unwrap

    chunks = [unwrap(c) for c in chunks]
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def save_mcore(chunks, hf_config, out_dir, *, tokenizer_dir=None, params_dtype: str = "float32") -> None:
    """Collective: write the dist checkpoint of the chunks plus ra3_model.json and the tokenizer."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from ra3_megatron.megatron.convert_weights import copy_tokenizer_files

    out = Path(out_dir)
    _refuse_non_empty(out)  # on every rank, before any collective, so none is left waiting
    if _rank0():
        out.mkdir(parents=True, exist_ok=True)
    _barrier()
    dist_checkpointing.save(model_sharded_state_dict(chunks), str(out))
    if _rank0():
        cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        copied = []
        if tokenizer_dir is not None:
            (out / TOKENIZER_SUBDIR).mkdir(exist_ok=True)
            copied = copy_tokenizer_files(tokenizer_dir, out / TOKENIZER_SUBDIR)
        meta = {
            "format": FORMAT,
            "hf_config": cfg,
            "params_dtype": params_dtype,
            "tokenizer": TOKENIZER_SUBDIR if copied else None,
            "saved_with": {
                "tp": ps.get_tensor_model_parallel_world_size(),
                "pp": ps.get_pipeline_model_parallel_world_size(),
                "transformer_impl": chunks[0].config.transformer_impl,
            },
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    _barrier()


def read_mcore_meta(mcore_dir) -> tuple[object, dict]:
    """(HF PretrainedConfig, the ra3_model.json dict) of a checkpoint written by save_mcore."""
    from transformers import AutoConfig

    path = Path(mcore_dir) / META_FILE
    if not path.exists():
        raise InputError(path, "missing: not a checkpoint written by `ra3 convert hf-to-mcore`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    if meta.get("format") != FORMAT:
        raise InputError(path, f"format {meta.get('format')!r} is not {FORMAT!r}")
    cfg = dict(meta["hf_config"])
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg), meta


def load_mcore_into(chunks, mcore_dir) -> None:
    """Collective: load a dist checkpoint into the chunks, whatever TP/PP it was saved with."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    from ra3_megatron.megatron.convert_weights import unwrap

    chunks = [unwrap(c) for c in chunks]
    sharded = model_sharded_state_dict(chunks)
    # Keys the checkpoint lacks are dropped here: only TE's _extra_state may be absent (a
    # checkpoint saved with the local spec, loaded into a TE model).
    loaded, _missing, unexpected = dist_checkpointing.load(
        sharded, str(mcore_dir), strict=StrictHandling.RETURN_UNEXPECTED
    )
    bad = sorted(k for k in unexpected if not k.endswith("_extra_state"))
    if bad:
        raise InputError(mcore_dir, f"checkpoint lacks {len(bad)} model tensors, e.g. {bad[:3]}")
    keys = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
    with torch.no_grad():
        for chunk, key in zip(chunks, keys):
            result = chunk.load_state_dict(loaded[key], strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
            if missing:
                raise InputError(mcore_dir, f"checkpoint lacks {missing[:3]}")


def _hf_dtype(hf_dir) -> str:
    from ra3_megatron.megatron.convert_weights import SafetensorsReader

    raw = SafetensorsReader(hf_dir).dtype()
    if raw not in _ST_DTYPES:
        raise InputError(hf_dir, f"weights dtype {raw} is not supported (float32, bfloat16, float16)")
    return _ST_DTYPES[raw]


def _build(hf_config, tp: int, pp: int, params_dtype: str):
    from ra3_megatron.megatron.model import ModelBuildConfig, build_model_chunks
    from ra3_megatron.megatron.parallel import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(tp=tp, pp=pp))
    build_cfg = ModelBuildConfig(params_dtype=params_dtype, perform_initialization=False)
    return build_model_chunks(hf_config, build_cfg)


def hf_to_mcore(hf_dir, out_dir, *, tp: int = 1, pp: int = 1, dtype: str = "auto") -> None:
    """Run in every rank of a tp*pp world (or alone with tp=pp=1)."""
    from transformers import AutoConfig

    from ra3_megatron.megatron.convert_weights import load_hf_weights_into
    from ra3_megatron.megatron.parallel import destroy_distributed

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise InputError(hf_dir / "config.json", "missing: not a Hugging Face checkpoint directory")
    hf_config = AutoConfig.from_pretrained(hf_dir)
    params_dtype = _hf_dtype(hf_dir) if dtype == "auto" else dtype
    _refuse_non_empty(Path(out_dir))
    chunks = _build(hf_config, tp, pp, params_dtype)
    try:
        load_hf_weights_into(chunks, hf_dir)
        save_mcore(chunks, hf_config, out_dir, tokenizer_dir=hf_dir, params_dtype=params_dtype)
    finally:
        destroy_distributed()


def mcore_to_hf(mcore_dir, out_dir, *, tp: int = 1, pp: int = 1) -> None:
    from ra3_megatron.megatron.convert_weights import save_hf
    from ra3_megatron.megatron.parallel import destroy_distributed

    hf_config, meta = read_mcore_meta(mcore_dir)
    out = Path(out_dir)
    _refuse_non_empty(out)
    chunks = _build(hf_config, tp, pp, meta.get("params_dtype", "float32"))
    try:
        load_mcore_into(chunks, mcore_dir)
        tok = Path(mcore_dir) / meta["tokenizer"] if meta.get("tokenizer") else None
        save_hf(chunks, hf_config, tok, out)
    finally:
        destroy_distributed()


def check_inputs(direction: str, src, out_dir) -> None:
    """The cheap checks, before any process group or torchrun relaunch (errors name the file)."""
    if direction == "hf-to-mcore":
        if not (Path(src) / "config.json").exists():
            raise InputError(Path(src) / "config.json", "missing: not a Hugging Face checkpoint directory")
    else:
        read_mcore_meta(src)
    _refuse_non_empty(Path(out_dir))


def relaunch_under_torchrun(nproc: int, module: str, argv: list[str]) -> int:
    """Run `python -m module argv` as `nproc` ranks; one torch thread each on CPU."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *argv,
    ]
    return subprocess.run(cmd, env=env).returncode
