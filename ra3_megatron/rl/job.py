"""The ranks an RL phase runs over: this process alone, or every rank of the torchrun job.

RL on q and GRPO search or roll out on every rank (each its share of the step's snippets or
prompts), then every rank gathers what all of them found, so each holds the step's whole batch
in the order one process would have built it; the trainer's data-parallel ranks then take their
rows of it (`rl.batch.data_parallel_rows`). Gathering uses the default process group (gloo on
CPU, NCCL on GPUs), which the job creates before any engine starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    rank: int = 0
    world: int = 1

    @classmethod
    def of_default_group(cls) -> Job:
        """Every rank of torch's default process group (this process alone without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world-th, from its rank on (contiguous runs would give one
        rank all the long snippets of a sorted stream)."""
        return list(items[self.rank :: self.world])

    def gather_in_order(self, mine: Sequence[T]) -> list[T]:
        """Every rank's `share` results put back in the order of the items they came from."""
        if self.world == 1:
            return list(mine)
        parts = self.gather(list(mine))
        out: list[T] = []
        for i in range(max(len(p) for p in parts)):
            out.extend(p[i] for p in parts if i < len(p))
        return out

    def barrier(self) -> None:
        """Every rank waits for the others (bounded by the process group's timeout)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def from_main(self, obj: Any) -> Any:
        """The first rank's `obj` on every rank."""
        return obj if self.world == 1 else self.gather(obj)[0]

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, by rank (a collective: every rank calls it)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out
