"""Micro-batches: a resumable deterministic sampler for one data-parallel rank, row splitting, and
the reduction of the loss reports.

Global batch g covers samples [g * GBS, (g + 1) * GBS) (modulo the dataset length); it is cut
into rows of `micro_batch_size * dp_size`, of which rank r takes [r * mbs, (r + 1) * mbs) (Megatron-LM's
MegatronPretrainingSampler layout). The data position is a single number, the samples consumed,
saved in every checkpoint: resuming from it neither repeats nor skips a sample.

    it = microbatches(ds, consumed_samples=0, micro_batch_size=2, dp_rank=0, dp_size=1)
    batch = next(it)      # {"tokens": LongTensor[2, s], "labels": ..., "loss_mask": ..., ...}
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

INT_KEYS = ("tokens", "labels", "position_ids", "token_classes")
FLOAT_KEYS = ("loss_mask", "advantages", "old_logprobs", "ref_logprobs")


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts (torch or numpy arrays) into [b, ...] tensors with training dtypes."""
    import torch

    out: dict[str, Any] = {}
    for key in samples[0]:
        if key not in INT_KEYS and key not in FLOAT_KEYS and key != "attention_mask":
            continue  # anything else (ids, metadata) is not for the model
        stacked = torch.stack([torch.as_tensor(s[key]) for s in samples])
        if key in INT_KEYS:
            stacked = stacked.long()
        elif key in FLOAT_KEYS:
            stacked = stacked.float()
        else:
            stacked = stacked.bool()
        out[key] = stacked
    return out


def microbatches(
    dataset, *, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> Iterator[dict[str, Any]]:
    """Endless micro-batches for this rank starting at `consumed_samples` (wraps around the dataset)."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    start = consumed_samples
    while True:
        first = start + dp_rank * micro_batch_size
        yield collate([dataset[(first + j) % n] for j in range(micro_batch_size)])
        start += micro_batch_size * dp_size


def split_rows(batch: dict[str, Any], micro_batch_size: int, *, multiple: int = 1,
               keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Cut a [B, ...] batch into micro-batches, padding with copies of the last row up to a whole
    number of micro-batches (and of `multiple` micro-batches); callers drop the padded rows."""
    import torch

    keys = [k for k in (keys or batch) if batch.get(k) is not None]
    rows = int(batch[keys[0]].shape[0])
    n = max(1, math.ceil(rows / micro_batch_size))
    n = math.ceil(n / multiple) * multiple
    pad = n * micro_batch_size - rows

    def padded(v):
        return torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) if pad else v

    full = {k: padded(batch[k]) for k in keys}
    return [{k: v[i * micro_batch_size : (i + 1) * micro_batch_size] for k, v in full.items()} for i in range(n)]


def reduce_reports(reports: list[dict]) -> dict[str, list[float]]:
    """Collective: sum the loss reports' [sum, count] pairs over micro-batches and data-parallel
    ranks (on the last pipeline stage, which holds them), then share them with every stage."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    names: list[str] = sorted({k for r in reports for k in r})
    if names:
        total = torch.stack([sum(r[k].float().cpu() for r in reports if k in r) for k in names])
        if torch.cuda.is_available():
            total = total.cuda()
        dist.all_reduce(total, group=ps.get_data_parallel_group())
        payload = [dict(zip(names, total.cpu().tolist()))]
    else:
        payload = [None]
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast_object_list(
            payload, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    return payload[0] or {}
