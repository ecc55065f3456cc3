"""Where upscaled frames go: a preallocated tensor, or anything with `write(start, frames)`.

The pipeline emits every output frame exactly once, in order, as `[n, H, W, C]` CPU tensors of
the sink's `dtype`. A streaming sink (the CLI's video writer) therefore keeps host memory at one
batch instead of the whole video.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)


@runtime_checkable
class FrameSink(Protocol):
    """Receives output frames [n, H, W, C] (C = 3, or 4 with alpha) in order."""

    dtype: torch.dtype

    def write(self, start: int, frames: torch.Tensor) -> None: ...


class TensorSink:
    """Collects the output in one preallocated [T, H, W, C] tensor (`frames`).

    Host memory: T*H*W*C*itemsize, allocated once up front (4 bytes per value for float32, the
    ComfyUI IMAGE dtype; 1 for uint8).
    """

    def __init__(self, num_frames: int, height: int, width: int, channels: int, dtype: torch.dtype = torch.float32):
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
        self.dtype = dtype
        self.frames = torch.empty((num_frames, height, width, channels), dtype=dtype)
        self._written = torch.zeros(num_frames, dtype=torch.bool)

    def write(self, start: int, frames: torch.Tensor) -> None:
        stop = start + frames.shape[0]
        self.frames[start:stop].copy_(frames)
        self._written[start:stop] = True

    def result(self) -> torch.Tensor:
        missing = (~self._written).nonzero().flatten()
        if missing.numel():
            raise RuntimeError(f"upscale produced no output for frames {missing[:10].tolist()} (pipeline bug)")
        return self.frames


def to_output(unit: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[0, 1] float -> the sink dtype; uint8 uses upstream's rounding, round(x*255)."""
    if dtype == torch.uint8:
        return torch.round(unit * 255.0).to(torch.uint8)
    return unit.to(dtype)
