"""torchrun worker: Megatron logits and HF export under several TP/PP/VPP layouts, in one launch.

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tests/distributed/workers/logits_worker.py SPEC.json

SPEC: {"input_ids": path of a [b, s] int64 tensor, "out": dir,
       "cases": [{"name", "hf_dir", "tp", "pp", "vpp", "reload_from": earlier case name or null}]}.
Each case saves its dist checkpoint to OUT/ckpt/NAME; with reload_from it also loads that (other
layout's) checkpoint into a fresh model and exports it again.
Rank 0 writes OUT/NAME.pt (float32 logits [b, s, vocab]) and OUT/NAME.json (export checks), and
OUT/shims.json (what the CPU shims did). The test compares them with transformers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def check_shims() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from ra3_megatron.megatron.cpu_shims import apply_cpu_shims

    tracker = get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    with tracker.fork():
        b = torch.rand(4)
    return {
        "applied_again": apply_cpu_shims(),
        "current_device": str(torch.cuda.current_device()),
        "cuda_zeros_device": str(torch.zeros(2, device="cuda").device),
        "dot_cuda_device": str(torch.ones(2).cuda().device),
        "pinned_ok": str(torch.empty(2, pin_memory=True).device),
        "type_name": torch.ones(2).type(),
        "fork_restores_default": bool(torch.equal(before, torch.get_rng_state())),
        "fork_advances_stream": not torch.equal(a, b),
        "synchronize": torch.cuda.synchronize() is None,
    }


def forward_logits(chunks, input_ids):
    """Full-vocab logits on the last pipeline stage (None elsewhere)."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = input_ids.shape
    position_ids = torch.arange(s).unsqueeze(0).expand(b, -1)

    def gather(logits):
        return tensor_parallel.gather_from_tensor_model_parallel_region(logits)

    if ps.get_pipeline_model_parallel_world_size() == 1:
        with torch.no_grad():
            return gather(chunks[0](input_ids, position_ids, None))

    def batches():
        for i in range(b):
            yield input_ids[i : i + 1], position_ids[i : i + 1]

    iters = [batches() for _ in chunks]

    def forward_step(data_iterator, model):
        ids, pos = next(data_iterator)
        return model(ids, pos, None), lambda out, non_loss_data=False: gather(out)

    outs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks,
        num_microbatches=b,
        seq_length=s,
        micro_batch_size=1,
        forward_only=True,
        collect_non_loss_data=True,
    )
    return torch.cat(outs) if ps.is_pipeline_last_stage() else None


def export_check(chunks, hf_dir) -> dict:
    from safetensors.torch import load_file

    ref = load_file(str(Path(hf_dir) / "model.safetensors"))
    from ra3_megatron.megatron.model import export_hf_state_dict

    got = {name: t.clone() for name, t in export_hf_state_dict(chunks)}
    ref = {k: v for k, v in ref.items() if not (k == "lm_head.weight" and "lm_head.weight" not in got)}
    return {
        "names_equal": sorted(got) == sorted(ref),
        "all_equal": all(torch.equal(got[k], ref[k]) for k in ref if k in got),
        "n": len(got),
    }


def tp_attrs(chunks) -> list:
    return [
        (n, p.tensor_model_parallel, p.partition_dim, p.partition_stride)
        for c in chunks
        for n, p in c.named_parameters()
    ]


def inv_freq_diff(chunk, hf_config) -> float | None:
    """Megatron's RoPE frequencies against transformers' own computation (llama3 scaling)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_type", "default")
    rot = getattr(chunk, "rotary_pos_emb", None)
    if rope_type not in ROPE_INIT_FUNCTIONS or rot is None:
        return None
    ref, _ = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return float((rot.inv_freq.cpu() - ref).abs().max())


def main(spec_path: str) -> None:
    from transformers import AutoConfig

    from ra3_megatron.megatron.convert import load_mcore_into, save_mcore
    from ra3_megatron.megatron.model import ModelBuildConfig, build_model_chunks, load_hf_weights_into
    from ra3_megatron.megatron.parallel import ParallelConfig, destroy_distributed, init_distributed

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    input_ids = torch.load(spec["input_ids"])
    rank0 = False
    for case in spec["cases"]:
        t0 = time.perf_counter()
        init_distributed(ParallelConfig(tp=case["tp"], pp=case["pp"], vpp=case.get("vpp")))
        rank0 = torch.distributed.get_rank() == 0
        if rank0 and not (out / "shims.json").exists():
            (out / "shims.json").write_text(json.dumps(check_shims()))
        hf_config = AutoConfig.from_pretrained(case["hf_dir"])
        # No random init (every weight comes from the checkpoint), as the converter builds it.
        build = ModelBuildConfig(seq_length=input_ids.shape[1], perform_initialization=False)
        chunks = build_model_chunks(hf_config, build)
        load_hf_weights_into(chunks, case["hf_dir"])
        for c in chunks:
            c.eval()
        logits = forward_logits(chunks, input_ids)
        result = export_check(chunks, case["hf_dir"])
        result["inv_freq_max_diff"] = inv_freq_diff(chunks[0], hf_config)
        # Dist checkpoint across layouts: save this layout, reload an earlier layout's checkpoint
        # into a freshly (randomly) initialised model, export again.
        save_mcore(chunks, hf_config, out / "ckpt" / case["name"], tokenizer_dir=case["hf_dir"])
        if case.get("reload_from"):
            fresh = build_model_chunks(hf_config, ModelBuildConfig(seq_length=input_ids.shape[1]))
            before = export_check(fresh, case["hf_dir"])["all_equal"]
            load_mcore_into(fresh, out / "ckpt" / case["reload_from"])
            result["reload"] = {"equal_before": before, **export_check(fresh, case["hf_dir"])}
            result["tp_attrs_match"] = tp_attrs(fresh) == tp_attrs(chunks)
        # The last pipeline stage has the logits: send them to rank 0 for writing.
        world = torch.distributed.get_world_size()
        holders = [None] * world
        torch.distributed.all_gather_object(holders, logits is not None)
        src = holders.index(True)
        if src != 0:
            if torch.distributed.get_rank() == src:
                torch.distributed.send(logits.contiguous(), dst=0)
            elif rank0:
                logits = torch.empty(input_ids.shape[0], input_ids.shape[1], hf_config.vocab_size)
                torch.distributed.recv(logits, src=src)
        if rank0:
            torch.save(logits[..., : hf_config.vocab_size].float(), out / f"{case['name']}.pt")
            (out / f"{case['name']}.json").write_text(json.dumps(result))
            print(f"{case['name']}: {time.perf_counter() - t0:.2f} s", flush=True)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
