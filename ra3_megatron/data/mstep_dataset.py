"""The M-step training dataset: megatron.core's GPTDataset plus the class (code / latent) of each label.

    train, valid, test = build_mstep_datasets("data/infused", seq_length=1024, tokenizer_dir="tiny",
                                              train_samples=1000, valid_samples=0, seed=1234)
    sample = train[0]   # tokens, labels, loss_mask, position_ids (+ attention_mask), token_classes

`LatentGPTDataset` is a `GPTDataset` (built by `BlendedMegatronDatasetBuilder` from a
`GPTDatasetConfig`, as Megatron-LM does, so blends, splits and the index cache all work) that
reads `PREFIX_classes` (written by `IndexedWriter` with the same document structure) through the
very same document / sample / shuffle indices. `token_classes[i]` is the class of `labels[i]`
(int64: 0 = code, 1 = latent; padding is code, and its loss_mask is 0 anyway). A dataset without
`PREFIX_classes` (e.g. from Megatron's own preprocess_data.py) is an InputError.

Megatron's sample index is built by its C++ helper (`megatron.core.datasets.helpers_cpp`); the
megatron-core 0.16.1 wheel ships it prebuilt, so nothing is compiled here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ra3_megatron.data.indexed import classes_prefix, quiet_megatron_import

quiet_megatron_import()  # before the megatron imports below: no "Transformer Engine not installed" noise
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402
from megatron.core.datasets.utils import get_blend_from_list  # noqa: E402

from ra3_megatron.data.tokenizer import MegatronTokenizerAdapter, load_tokenizer  # noqa: E402
from ra3_megatron.errors import InputError  # noqa: E402

__all__ = ["LatentGPTDataset", "build_mstep_datasets", "mstep_dataset_config"]

CODE = 0


class LatentGPTDataset(GPTDataset):
    """GPTDataset whose samples also carry `token_classes` (the class of each label token)."""

    def __init__(self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        prefix = classes_prefix(indexed_dataset.path_prefix)
        if not IndexedDataset.exists(prefix):
            raise InputError(f"{prefix}.idx", "token classes are missing (write the dataset with `ra3 prepare`)")
        self.classes = IndexedDataset(prefix, multimodal=False, mmap=config.mmap_bin_files)
        if not np.array_equal(self.classes.sequence_lengths, indexed_dataset.sequence_lengths):
            raise InputError(f"{prefix}.idx", f"document lengths differ from {indexed_dataset.path_prefix}.idx")

    def _query_classes(self, idx: int) -> np.ndarray:
        """The classes of the tokens `_query_document_sample_shuffle_indices(idx)` returns (same logic)."""
        extra = self.config.add_extra_token_to_sequence
        idx = self.shuffle_index[idx]
        doc_beg, off_beg = self.sample_index[idx]
        doc_end, off_end = self.sample_index[idx + 1]
        parts = []
        for i in range(doc_beg, doc_end + 1):
            offset = int(off_beg) if i == doc_beg else 0
            length = None if i < doc_end else int(off_end) - offset + extra
            parts.append(self.classes.get(self.document_index[i], offset=offset, length=length))
        length = sum(map(len, parts))
        target = self.config.sequence_length + extra
        if length < target:
            parts.append(np.full(target - length, CODE))
        return np.concatenate(parts, dtype=np.int64)

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)  # also loads lazily-mapped indices
        classes = torch.from_numpy(self._query_classes(0 if idx is None else idx))
        if self.config.add_extra_token_to_sequence:
            token_classes = classes[1:].contiguous()
        else:
            token_classes = torch.roll(classes, shifts=-1, dims=0)
            token_classes[-1] = CODE
        sample["token_classes"] = token_classes
        return sample


def mstep_dataset_config(
    blend, *, seq_length: int, tokenizer, seed: int, split: str | None = "100,0,0",
    blend_per_split: Sequence | None = None, path_to_cache: str | None = None, eod_mask_loss: bool = False,
    reset_position_ids: bool = False, reset_attention_mask: bool = False, create_attention_mask: bool = True,
) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=blend, blend_per_split=blend_per_split,
        split=split, path_to_cache=path_to_cache, tokenizer=tokenizer, reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask,
    )


def _blend(prefix_or_blend: str | os.PathLike | Sequence[str]):
    items = [os.fspath(prefix_or_blend)] if isinstance(prefix_or_blend, str | os.PathLike) else list(prefix_or_blend)
    blend = get_blend_from_list([str(i) for i in items])
    for prefix in blend[0]:
        if not IndexedDataset.exists(prefix):
            raise InputError(f"{prefix}.idx", "no indexed dataset here (need PREFIX.bin and PREFIX.idx)")
    return blend


def build_mstep_datasets(
    prefix_or_blend: str | os.PathLike | Sequence[str], *, seq_length: int, tokenizer_dir: str | os.PathLike,
    train_samples: int | None, valid_samples: int | None, seed: int, split: str = "100,0,0",
    valid_prefix: str | os.PathLike | Sequence[str] | None = None, test_samples: int | None = 0,
    path_to_cache: str | None = None, is_built_on_rank: Callable[[], bool] | None = None, **config_kwargs,
):
    """(train, valid, test) LatentGPTDatasets (None for an empty split).

    `prefix_or_blend`: a prefix, a list of prefixes, or Megatron's ["w1", "p1", "w2", "p2"]. With
    `valid_prefix` (e.g. the PREFIX_valid of `ra3 prepare --holdout`) the splits come from separate
    datasets and `split` is ignored. `path_to_cache` defaults to `<dir of the first prefix>/cache`
    (unused for a blend of several prefixes outside torch.distributed: see the note in the code).
    Extra keyword arguments (eod_mask_loss, reset_position_ids, reset_attention_mask,
    create_attention_mask) go to the GPTDatasetConfig.
    """
    tokenizer = MegatronTokenizerAdapter(load_tokenizer(os.fspath(tokenizer_dir)))
    blend = _blend(prefix_or_blend)
    if path_to_cache is None:
        path_to_cache = os.path.join(os.path.dirname(os.path.abspath(blend[0][0])), "cache")
    if len(blend[0]) > 1 and not torch.distributed.is_initialized():
        # megatron-core 0.16.1's BlendedDataset calls torch.distributed.get_rank() whenever it has a
        # cache dir; without a process group, build its (cheap) indices uncached. The GPTDatasets then
        # cache under PREFIX/cache/ (Megatron's default).
        path_to_cache = None
    if valid_prefix is not None:
        per_split = [blend, _blend(valid_prefix), None]
        config = mstep_dataset_config(None, seq_length=seq_length, tokenizer=tokenizer, seed=seed, split=None,
                                      blend_per_split=per_split, path_to_cache=path_to_cache, **config_kwargs)
    else:
        config = mstep_dataset_config(blend, seq_length=seq_length, tokenizer=tokenizer, seed=seed, split=split,
                                      path_to_cache=path_to_cache, **config_kwargs)
    builder = BlendedMegatronDatasetBuilder(
        LatentGPTDataset, [train_samples, valid_samples, test_samples], is_built_on_rank or (lambda: True), config
    )
    train, valid, test = builder.build()
    return train, valid, test
