"""Weights between HF safetensors and Megatron-Core model chunks, for any TP/PP/VPP layout.

- `load_hf_weights_into(chunks, hf_dir)`: each rank reads the tensors its own TP/PP slice needs.
- `export_hf_state_dict(chunks)`: collective; yields (hf_name, full tensor) in HF order. EVERY rank
  must iterate it to the end and every rank receives every tensor (TP shards are all-gathered
  inside the owning stage, then broadcast from that stage over the world group). Tensors are on
  the model's device, in the parameter dtype.
- `save_hf(chunks, hf_config, tokenizer_dir, out_dir)`: collective; rank 0 writes safetensors,
  config.json and the tokenizer files (loadable by transformers and vLLM).

With Megatron-Bridge importable and a Transformer Engine model, its AutoBridge does the mapping
(convert_bridge.py); `RA3_CONVERT_BACKEND=own` forces the project's own mapping.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from ra3_megatron.errors import InputError
from ra3_megatron.megatron.convert_mapping import export_order, hf_arch, hf_shapes, rule_for

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _layer_offset(model) -> int:
    layers = getattr(model.decoder, "layers", None) if hasattr(model, "decoder") else None
    return layers[0].layer_number - 1 if layers is not None and len(layers) else 0


def _arch(model):
    arch = getattr(model, "ra3_hf_arch", None)
    if arch is None:
        raise ValueError("model chunk was not built by ra3_megatron.megatron.model.build_gpt_model")
    return arch


def _tp():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


class SafetensorsReader:
    """Lazy reader over model.safetensors or a sharded checkpoint with its index."""

    def __init__(self, hf_dir):
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [p.name for p in sorted(self.dir.glob("*.safetensors"))]
        if not files:
            raise InputError(self.dir, "no *.safetensors weights found")
        self.where: dict[str, Path] = {}
        for f in files:
            with safe_open(self.dir / f, framework="pt") as fh:
                for k in fh.keys():
                    self.where[k] = self.dir / f
        self._open = {p: safe_open(p, framework="pt") for p in set(self.where.values())}

    def dtype(self):
        name = next(iter(self.where))
        return self._open[self.where[name]].get_slice(name).get_dtype()

    def get(self, name: str):
        if name not in self.where:
            raise InputError(self.dir, f"tensor {name!r} is missing from the checkpoint")
        return self._open[self.where[name]].get_tensor(name)


def load_hf_weights_into(model_chunks, hf_dir) -> None:
    """Copy this rank's slice of the HF checkpoint in `hf_dir` into the (unwrapped) chunks."""
    import torch

    from ra3_megatron.megatron import convert_bridge

    chunks = [unwrap(c) for c in model_chunks]
    if convert_bridge.use_bridge(chunks):
        convert_bridge.load_hf_weights(chunks, hf_dir)
        return
    reader = SafetensorsReader(hf_dir)
    tp_rank, tp = _tp()
    for chunk in chunks:
        arch, offset = _arch(chunk), _layer_offset(chunk)
        padded = _padded_vocab(chunk)
        for name, param in chunk.named_parameters():
            rule = rule_for(name, arch, offset)
            local = rule.to_local({n: reader.get(n) for n in rule.hf}, tp_rank, tp, padded)
            if tuple(local.shape) != tuple(param.shape):
                raise InputError(
                    hf_dir,
                    f"{', '.join(rule.hf)}: shape {tuple(local.shape)} does not fit {name} {tuple(param.shape)}",
                )
            with torch.no_grad():
                param.copy_(local)


def _padded_vocab(chunk) -> int:
    return getattr(chunk, "vocab_size", 0)


def _local_entries(chunks) -> dict:
    """Canonical global Megatron name -> (Rule, local tensor), tied output layer left out."""
    out = {}
    for chunk in chunks:
        arch, offset = _arch(chunk), _layer_offset(chunk)
        for name, param in chunk.named_parameters():
            rule = rule_for(name, arch, offset)
            if name == "output_layer.weight" and arch.tie_word_embeddings:
                continue
            out[rule.mcore] = (rule, param.detach())
    return out


def export_hf_state_dict(model_chunks) -> Iterator[tuple[str, object]]:
    """Collective: yields every (hf_name, full tensor) on every rank (see the module docstring)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from ra3_megatron.megatron import convert_bridge

    chunks = [unwrap(c) for c in model_chunks]
    if convert_bridge.use_bridge(chunks):
        yield from convert_bridge.export_hf_weights(chunks)
        return
    arch = _arch(chunks[0])
    mine = _local_entries(chunks)
    world = dist.get_world_size() if dist.is_initialized() else 1
    tp_rank, tp = _tp()
    exporter = world == 1 or (
        ps.get_data_parallel_rank(with_context_parallel=True) == 0
        and ps.get_expert_model_parallel_rank() == 0
    )
    owners: dict[str, int] = {}
    if world > 1:
        held = sorted(mine) if exporter and tp_rank == 0 else []
        gathered: list = [None] * world
        dist.all_gather_object(gathered, held)
        for rank, names in enumerate(gathered):
            for n in names:
                owners.setdefault(n, rank)
    shapes = hf_shapes(arch)
    dtype = next(iter(mine.values()))[1].dtype if mine else next(chunks[0].parameters()).dtype
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    for mcore in export_order(arch):
        full = None
        if mcore in mine and exporter:
            rule, local = mine[mcore]
            shards = [local]
            if tp > 1:
                shards = [torch.empty_like(local) for _ in range(tp)]
                dist.all_gather(shards, local.contiguous(), group=ps.get_tensor_model_parallel_group())
            full = rule.from_shards(shards)
        rule = rule_for(mcore, arch)
        for hf_name in rule.hf:
            if world == 1:
                yield hf_name, full[hf_name]
                continue
            if mcore not in owners:
                raise RuntimeError(f"no rank holds {mcore}")
            src = owners[mcore]
            t = (
                full[hf_name].contiguous()
                if dist.get_rank() == src
                else torch.empty(shapes[hf_name], dtype=dtype, device=device)
            )
            dist.broadcast(t, src=src)
            yield hf_name, t


def _hf_config_dict(hf_config, dtype) -> dict:
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    dtype_name = str(dtype).removeprefix("torch.")
    cfg["torch_dtype"] = dtype_name
    cfg["dtype"] = dtype_name
    if not cfg.get("architectures"):
        cfg["architectures"] = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[cfg["model_type"]]]
    return cfg


def copy_tokenizer_files(src, dst) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if src is not None and (Path(src) / name).exists():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def save_hf(model_chunks, hf_config, tokenizer_dir, out_dir, *, max_shard_bytes: int = 5 * 2**30) -> None:
    """Collective: rank 0 writes an HF checkpoint dir (safetensors + config.json + tokenizer)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    hf_arch(hf_config)  # refuse unsupported configs before any collective
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    out = Path(out_dir)
    shards: list[dict] = [{}]
    size, dtype = 0, None
    for name, tensor in export_hf_state_dict(model_chunks):
        if not rank0:
            continue
        dtype = tensor.dtype
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().cpu().contiguous()
        size += nbytes
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], out / "model.safetensors", metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, out / fname, metadata=meta)
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (out / "config.json").write_text(
            json.dumps(_hf_config_dict(hf_config, dtype), indent=2, sort_keys=True)
        )
        copy_tokenizer_files(tokenizer_dir, out)
    if dist.is_initialized():
        dist.barrier()
