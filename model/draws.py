"""BatchDraws: the random draws of one training batch, the same however many processes share it.

Under DDP each process holds some rows of the global batch (rank r: rows r, r + world, ...). Every
process draws noise, timesteps and dropout for the *whole* global batch from the same generator and
keeps its rows, so item j's randomness depends on (seed, step, j) only and N processes train exactly
as one process with the same global batch. Drawing the other rows too costs a few randn calls.
With one process (`rows` None) a draw is the plain generator call it always was.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchDraws:
    generator: torch.Generator | None
    size: int | None = None             # the global batch; None: this process holds all of it
    rows: torch.Tensor | None = None    # this process's rows of the global batch, in order

    @classmethod
    def of(cls, generator: "torch.Generator | BatchDraws | None") -> "BatchDraws":
        return generator if isinstance(generator, BatchDraws) else cls(generator)

    @classmethod
    def shard(cls, generator: torch.Generator | None, size: int, rank: int, world: int) -> "BatchDraws":
        """Rank `rank`'s draws of a global batch of `size` items (rows rank, rank + world, ...)."""
        return cls(generator, size, torch.arange(rank, size, world)) if world > 1 else cls(generator)

    def take(self, k: int) -> tuple[int, "BatchDraws"]:
        """A sub-batch of the global batch's first k items: (how many of this process's rows are
        among them, their draws). The local rows come in global order, so they are its first ones."""
        if self.rows is None:
            return k, self
        mine = self.rows[self.rows < k]
        return len(mine), BatchDraws(self.generator, k, mine)

    def _mine(self, draw_global, shape: tuple[int, ...]) -> torch.Tensor:
        if self.rows is None:
            return draw_global(shape)
        assert shape[0] == len(self.rows), f"a batch of {shape[0]} rows for {len(self.rows)} drawn rows"
        return draw_global((self.size, *shape[1:]))[self.rows]

    def randn(self, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        """N(0, 1) of `shape`, whose first dimension is this process's batch (CPU tensor)."""
        return self._mine(lambda s: torch.randn(s, generator=self.generator, dtype=dtype), tuple(shape))

    def rand(self, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._mine(lambda s: torch.rand(s, generator=self.generator, dtype=dtype), (n,))

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._mine(lambda s: torch.randint(0, high, s, generator=self.generator), (n,))
