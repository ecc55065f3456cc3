"""Frames in and out as streams: lazy frame sources, per-batch outputs, and the joiner.

An upscale is a set of independent work items, one per temporal batch (`batching.plan_batches`):
a batch's input frames -> encode -> DiT -> decode -> colour fix gives the batch's output frames
*before* the crossfade (`BatchOutput`). Noise is drawn per batch index (`SeededNoise`), so a
batch's output does not depend on which batches ran before it, on which machine, or in which
order. The `Joiner` takes batch outputs in any order and emits frames in order, through exactly
the single-process `Crossfade`, into a sink.

Sources (`FrameSource`): anything with `shape` (T, H, W, C), `dtype` and `read(start, stop)` ->
frames [stop-start, H, W, C] on the CPU. `TensorSource` wraps a tensor (reads are views, no
copy); `video_io.VideoSource` decodes a file forward, keeping only the frames still needed.
Reads come in increasing `start` order (overlapping reads allowed), which both sources rely on.

Host memory of the joiner: the outputs that arrived ahead of their turn, plus the crossfade's
held frames (`temporal_overlap` frames); `held_bytes()` reports it (the streaming tests count it).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..batching import Batch, Crossfade
from .output import FrameSink, to_output


@runtime_checkable
class FrameSource(Protocol):
    """Input frames read lazily: `shape` (T, H, W, C), `dtype`, `read(start, stop)`, `identity()`."""

    shape: tuple[int, int, int, int]
    dtype: torch.dtype

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) as a CPU tensor [n, H, W, C]; `start` never decreases between calls
        by more than the previous read's length (overlaps are re-read)."""
        ...

    def identity(self) -> dict:
        """What identifies this input for `--resume` (e.g. a content hash)."""
        ...


class TensorSource:
    """A [T, H, W, C] tensor as a `FrameSource`: reads are slices (views), nothing is copied."""

    def __init__(self, frames: torch.Tensor):
        self.frames = frames
        self.shape = tuple(frames.shape)
        self.dtype = frames.dtype

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.frames[start:stop]

    def identity(self) -> dict:
        """SHA-256 of the frames' bytes (chunk by chunk: no copy of the whole tensor)."""
        digest = hashlib.sha256()
        for start in range(0, self.shape[0], 16):
            chunk = self.frames[start:start + 16].detach().to("cpu").contiguous()
            digest.update(chunk.view(torch.uint8).numpy().tobytes() if chunk.dtype != torch.uint8
                          else chunk.numpy().tobytes())
        return {"frames_sha256": digest.hexdigest(), "shape": list(self.shape), "dtype": str(self.dtype)}


def as_source(frames: torch.Tensor | FrameSource) -> FrameSource:
    return TensorSource(frames) if isinstance(frames, torch.Tensor) else frames


@dataclass
class BatchOutput:
    """One batch's output frames before the crossfade, ready to travel (CPU tensors only).

    pieces: consecutive chunks covering the batch's frames in order, each (n, 3, H, W):
        float32 in [0, 1] where the crossfade may still blend them (the batch's first `overlap`
        frames and the last `hold` frames, the next batch's overlap), and already in the sink
        dtype elsewhere (`to_output` is elementwise, so converting early changes nothing and a
        uint8 video moves 4x fewer bytes between processes).
    alpha: (length, 1, H, W) in the sink dtype for RGBA input (the resized input alpha, which
        never goes through the model or the crossfade), else None.
    """

    batch: Batch
    pieces: list[torch.Tensor]
    alpha: torch.Tensor | None = None

    def nbytes(self) -> int:
        tensors = [*self.pieces, *([self.alpha] if self.alpha is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors)


def split_for_crossfade(unit: torch.Tensor, blend_head: int, blend_tail: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """(n, 3, H, W) float [0, 1] -> `BatchOutput.pieces`: the first `blend_head` and last
    `blend_tail` frames (those the crossfade may blend) stay float32 on the CPU, the middle goes
    to `dtype` (converted on the tensor's device, then moved to the CPU)."""
    n = unit.shape[0]
    head = min(max(blend_head, 0), n)
    tail_start = max(head, n - max(blend_tail, 0))
    pieces = [unit[:head].float().cpu(), to_output(unit[head:tail_start], dtype).cpu(), unit[tail_start:].float().cpu()]
    return [p for p in pieces if p.shape[0]]


class Joiner:
    """Batch outputs in any order -> frames in order through the `Crossfade` -> `sink.write`.

    `add(output)` keeps an output until every earlier batch is in, then pushes it (and any
    outputs waiting behind it) through the crossfade. `finish()` checks that every batch came.
    """

    def __init__(self, batches: list[Batch], sink: FrameSink, on_written: Callable[[int], None] | None = None):
        self.batches = batches
        self.sink = sink
        self._crossfade = Crossfade(hold_device="cpu")
        self._pending: dict[int, BatchOutput] = {}
        self._next = 0
        self._on_written = on_written or (lambda index: None)
        self.peak_held_bytes = 0

    @property
    def next_index(self) -> int:
        """The batch the joiner waits for."""
        return self._next

    def add(self, output: BatchOutput) -> None:
        index = output.batch.index
        if not self._next <= index < len(self.batches) or index in self._pending:
            raise RuntimeError(f"batch {index} was delivered twice or does not belong to this run (pipeline bug)")
        if output.batch != self.batches[index]:
            raise RuntimeError(f"batch {index} covers frames {output.batch.start}..{output.batch.stop - 1}, "
                               f"expected {self.batches[index].start}..{self.batches[index].stop - 1} (pipeline bug)")
        self._pending[index] = output
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes())
        while self._next in self._pending:
            self._emit(self._pending.pop(self._next))
            self._on_written(self._next)
            self._next += 1

    def held_bytes(self) -> int:
        """Host bytes held now: outputs waiting for an earlier batch plus the crossfade's held frames."""
        held = self._crossfade._held  # the crossfade's held tail (batching.Crossfade keeps it private)
        return sum(o.nbytes() for o in self._pending.values()) + (0 if held is None else held.numel() * held.element_size())

    def finish(self) -> None:
        if self._next != len(self.batches):
            raise RuntimeError(f"the run ended at batch {self._next} of {len(self.batches)} (pipeline bug)")
        self._crossfade.finish()

    def _emit(self, output: BatchOutput) -> None:
        batch = output.batch
        nxt = self.batches[batch.index + 1].overlap if batch.index + 1 < len(self.batches) else 0
        self._crossfade.start_batch(batch, hold=nxt)
        for piece in output.pieces:
            for start, frames in self._crossfade.push(piece):
                self._write(output, start, frames)
        self._crossfade.end_batch()

    def _write(self, output: BatchOutput, start: int, frames: torch.Tensor) -> None:
        if frames.dtype != self.sink.dtype:  # a float32 piece (blendable); the rest is already converted
            frames = to_output(frames, self.sink.dtype)
        if output.alpha is not None:
            offset = start - output.batch.start
            frames = torch.cat([frames, output.alpha[offset:offset + frames.shape[0]]], dim=1)
        self.sink.write(start, frames.permute(0, 2, 3, 1))
