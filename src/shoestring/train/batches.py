"""Deterministic batches from token shards, addressed by position so resume is exact.

The training stream is a sequence of non-overlapping windows of ``seq_len + 1`` tokens (input
plus the next-token targets), visited in a seeded random order per epoch. Optimizer step ``s``
always consumes global windows ``[s * G, (s + 1) * G)`` of that stream (``G`` = sequences per
step across all processes), so:

- resuming at step ``s`` needs nothing but ``s`` (the data position is part of the checkpoint);
- halving the micro-batch after an out-of-memory error changes how a step is cut into
  micro-batches, never which tokens the step sees;
- under DDP, rank ``r`` reads the ``r``-th slice of each step's windows, so two processes at
  batch ``b`` see exactly the tokens one process sees at batch ``2b``.

Validation uses the first windows of the validation shard in order: a fixed set, identical for
every evaluation and every run on the same prepared data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from shoestring.errors import UserError


class WindowStream:
    """Seeded permutation of the non-overlapping windows of a token array."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(
                f"the training shard has {len(tokens)} tokens, fewer than one sequence "
                f"of {seq_len + 1}; prepare more data or lower train.seq_len"
            )
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n_windows)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def window_ids(self, start: int, count: int) -> np.ndarray:
        """Window ids at global stream positions ``[start, start + count)`` (across epochs)."""
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, pos = divmod(start + i, self.n_windows)
            out[i] = self._permutation(epoch)[pos]
        return out

    def gather(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) int64 tensors of shape (len(ids), seq_len)."""
        t = self.seq_len
        rows = np.stack(
            [np.asarray(self.tokens[i * t : i * t + t + 1], dtype=np.int64) for i in ids]
        )
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]


def step_micro_batches(
    stream: WindowStream, step: int, global_batch: int, rank: int, world_size: int, micro_batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches this rank processes for optimizer step ``step``."""
    per_rank = global_batch // world_size
    ids = stream.window_ids(step * global_batch + rank * per_rank, per_rank)
    for i in range(0, per_rank, micro_batch):
        yield stream.gather(ids[i : i + micro_batch])


def validation_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set: the first ``max_batches`` full batches of in-order windows."""
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise UserError(
            f"the validation shard has {len(tokens)} tokens, fewer than one sequence "
            f"of {seq_len + 1}; prepare with a larger --val-fraction"
        )
    batches = []
    for b in range(max_batches):
        ids = np.arange(b * batch_size, min((b + 1) * batch_size, n_windows))
        if len(ids) == 0:
            break
        t = seq_len
        rows = np.stack([np.asarray(tokens[i * t : i * t + t + 1], dtype=np.int64) for i in ids])
        data = torch.from_numpy(rows)
        batches.append((data[:, :-1], data[:, 1:]))
    return batches
