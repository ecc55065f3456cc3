"""Temporal batches and the crossfade that joins them.

A video of T frames is cut into batches of `batch_size` frames (4n+1: the VAE compresses time
4x causally, so 4n+1 frames make n+1 latent frames with no padding). Consecutive batches share
`overlap` frames: batch k starts at k*(batch_size - overlap), and batches are added until one
reaches the last frame. The last batch may be shorter; the pipeline pads it upstream's way
(repeat the last frame to 4n+1) and drops the padding after decoding.

Shared frames are decoded twice and mixed with weights that ramp linearly across the overlap:
the incoming batch gets (j+1)/(n+1) at shared frame j of n, the outgoing batch the rest, so the
weights sum to 1 and each side contributes to every shared frame (no frame is a hard cut).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """Frames [start, stop) of the input; the first `overlap` are shared with the previous batch."""

    index: int
    start: int
    stop: int
    overlap: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def plan_batches(num_frames: int, batch_size: int, overlap: int) -> list[Batch]:
    """Cover frames 0..num_frames-1 with batches of at most `batch_size` sharing `overlap` frames.

    Every batch after the first is longer than `overlap` (the previous one ended before the last
    frame), so the shared frames always exist in both batches.
    """
    if num_frames < 1 or batch_size < 1 or not 0 <= overlap < batch_size:
        raise ValueError(f"cannot plan batches for {num_frames} frames, batch_size={batch_size}, overlap={overlap}")
    step = batch_size - overlap
    starts = [0]
    while starts[-1] + batch_size < num_frames:
        starts.append(starts[-1] + step)
    return [
        Batch(index=i, start=s, stop=min(s + batch_size, num_frames), overlap=0 if i == 0 else overlap)
        for i, s in enumerate(starts)
    ]


def crossfade_weights(n: int) -> torch.Tensor:
    """Weights of the incoming batch on n shared frames: (j+1)/(n+1), strictly inside (0, 1)."""
    return torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)


class Crossfade:
    """Joins per-batch outputs into one ordered frame stream, blending the shared frames.

    For each batch: `start_batch(batch, hold)`, then `push` its frames in order (in chunks of any
    size), then `end_batch()`. `push` returns (first frame index, frames) pieces ready to write,
    in order, each frame exactly once. The last `hold` frames of a batch (the next batch's
    overlap) are kept back on `hold_device` until the next batch blends with them, so only
    `overlap` frames are ever held. With overlap >= half the batch a held frame may itself be a
    blend; the weights still sum to 1.
    """

    def __init__(self, hold_device: torch.device | str = "cpu"):
        self._hold_device = torch.device(hold_device)
        self._held: torch.Tensor | None = None  # previous batch's tail, blended into this batch
        self._next_held: list[torch.Tensor] = []
        self._next_start = 0
        self._batch: Batch | None = None
        self._hold = 0
        self._pos = 0

    def start_batch(self, batch: Batch, hold: int) -> None:
        held_count = 0 if self._held is None else self._held.shape[0]
        if self._batch is not None:
            raise RuntimeError("Crossfade.start_batch called before end_batch of the previous batch")
        if batch.start != self._next_start:
            raise ValueError(f"batch {batch.index} starts at frame {batch.start}; the next unwritten frame is {self._next_start}")
        if held_count != batch.overlap:
            raise ValueError(f"batch {batch.index} shares {batch.overlap} frames but {held_count} were held")
        if not 0 <= hold < batch.length:
            raise ValueError(f"cannot hold {hold} frames of a {batch.length}-frame batch")
        self._batch, self._hold, self._pos = batch, hold, 0

    def push(self, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        batch = self._batch
        if batch is None:
            raise RuntimeError("Crossfade.push called outside start_batch/end_batch")
        pos, n = self._pos, frames.shape[0]
        if pos + n > batch.length:
            raise ValueError(f"batch {batch.index} has {batch.length} frames; got {pos + n}")
        if pos < batch.overlap:
            k = min(n, batch.overlap - pos)
            w = crossfade_weights(batch.overlap)[pos:pos + k].to(frames.device, frames.dtype)
            w = w.view(-1, *([1] * (frames.dim() - 1)))
            held = self._held[pos:pos + k].to(frames.device, frames.dtype)
            frames = torch.cat([held * (1 - w) + frames[:k] * w, frames[k:]])
        cut = batch.length - self._hold - pos  # frames of this chunk before the held tail
        if cut < n:
            self._next_held.append(frames[max(cut, 0):].to(self._hold_device))
        self._pos += n
        if cut <= 0:
            return []
        return [(batch.start + pos, frames[:cut])]

    def end_batch(self) -> None:
        batch = self._batch
        if batch is None or self._pos != batch.length:
            raise RuntimeError(f"Crossfade.end_batch: batch incomplete ({self._pos} frames pushed)")
        self._held = torch.cat(self._next_held) if self._next_held else None
        self._next_held = []
        self._next_start = batch.stop - self._hold
        self._batch = None

    def finish(self) -> None:
        """Check that every frame was emitted (the last batch must hold nothing)."""
        if self._batch is not None or self._held is not None:
            raise RuntimeError("Crossfade finished with frames still pending")
