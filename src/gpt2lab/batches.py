"""Batches: which windows of the token shards each training step sees, and which ones validation scores.

A window is ``n_ctx + 1`` consecutive tokens: the inputs are its first
``n_ctx``, the targets the same shifted by one.
"""

from __future__ import annotations

import numpy as np
import torch


class WindowSampler:
    """Chooses where the windows of each step start.

    * Random mode (default): each window starts at a uniformly random token,
      drawn from a seeded ``torch.Generator``.
    * Epoch mode (``epochs`` set): the tokens are cut into non-overlapping
      windows and every epoch visits each exactly once, in an order given by
      a permutation seeded with ``(seed, epoch)``.

    A step trains on a global batch of ``batch_size x world_size x
    grad_accum`` windows.  They are drawn together, as if by one process;
    then each rank takes its own slice of each micro-step.  So which windows
    a step sees depends on the global batch only, never on how it is split
    over processes and micro-steps: the training curve is the same on one
    process or eight, no two ranks ever share a window within an epoch, and
    the sampler's state (epoch, position, generator) means the same thing on
    any number of processes, so a checkpoint resumes on a different number.
    That state is saved in checkpoints and restored exactly."""

    def __init__(self, n_tokens: int, n_ctx: int, batch_size: int, seed: int, epoch_mode: bool = False,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        self.n_tokens, self.n_ctx, self.batch_size = n_tokens, n_ctx, batch_size
        self.seed, self.epoch_mode, self.rank, self.world_size = seed, epoch_mode, rank, world_size
        self.grad_accum = grad_accum
        self.n_windows = (n_tokens - 1) // n_ctx  # non-overlapping windows of n_ctx + 1 tokens
        self.epoch, self.position = 0, 0
        self.generator = torch.Generator().manual_seed(seed)
        self._perm: torch.Tensor | None = None

    def permutation(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.n_windows, generator=g)
        return self._perm

    def draw(self, count: int) -> torch.Tensor:
        """Start offsets of the next ``count`` windows, for all ranks together: ``(count,)``."""
        if not self.epoch_mode:
            return torch.randint(0, self.n_tokens - self.n_ctx, (count,), generator=self.generator)
        picked, have = [], 0
        while have < count:
            perm = self.permutation()
            take = min(count - have, self.n_windows - self.position)
            picked.append(perm[self.position:self.position + take])
            self.position += take
            have += take
            if self.position == self.n_windows:  # epoch done: the next one reshuffles
                self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        return torch.cat(picked) * self.n_ctx

    def next_step(self) -> list[torch.Tensor]:
        """This process's window starts for each micro-step of the next step:
        ``grad_accum`` tensors of shape ``(batch_size,)``."""
        starts = self.draw(self.batch_size * self.world_size * self.grad_accum)
        # (grad_accum, world_size, batch_size): micro-step m of rank r is starts[m, r]
        return list(starts.view(self.grad_accum, self.world_size, self.batch_size)[:, self.rank])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / max(self.n_windows, 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
        self.generator.set_state(state["generator"])


def get_batch(tokens: np.ndarray, starts: torch.Tensor, n_ctx: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(batch, n_ctx)`` for windows starting at ``starts``."""
    rows = np.stack([np.asarray(tokens[s:s + n_ctx + 1], dtype=np.int64) for s in starts.tolist()])
    xy = torch.from_numpy(rows)  # (batch, n_ctx + 1)
    return xy[:, :-1].to(device), xy[:, 1:].to(device)


def eval_starts(n_tokens: int, n_ctx: int, count: int) -> torch.Tensor:
    """A fixed, evenly spread set of validation windows (no randomness, so
    evaluating never disturbs the training random streams)."""
    last = n_tokens - n_ctx - 1
    if count == 1 or last <= 0:
        return torch.zeros(count, dtype=torch.long)
    return torch.linspace(0, last, count).round().long()
