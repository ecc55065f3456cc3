"""Adaptive ("720p") window partition and the per-call window plan (model-spec.md section 5).

The window size depends only on the aspect ratio of a sample's patch grid: the grid is rescaled
to the area of a 720p grid (45 x 80 patches), split into ``num_windows`` (4, 3, 3), and the time
axis into windows of ``ceil(min(t, 30) / 4)`` frames. Even blocks use regular windows, odd blocks
the same windows shifted by half a window on every axis that has more than one.

A plan groups the windows of a batch that share a shape and a text length, so that each group is
one batched attention call: its index tensors gather every window's video rows, then the sample's
text rows, into a ``(n, window + text)`` sequence.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .rope import rope_freqs, window_rope

__all__ = ["window_size", "axis_windows", "WindowGroup", "WindowPlan", "build_window_plan"]

# models/dit*/window.py: "720p" target grid in patches (720/16, 1280/16) and frame cap.
_REF_GRID_AREA = 45 * 80
_MAX_FRAMES = 30


def window_size(grid: tuple[int, int, int], num_windows: tuple[int, int, int]) -> tuple[int, int, int]:
    """Window extent ``(wt, wh, ww)`` for a patch grid ``(t, h, w)``."""
    t, h, w = grid
    nt, nh, nw = num_windows
    scale = math.sqrt(_REF_GRID_AREA / (h * w))
    rh, rw = max(round(h * scale), 1), max(round(w * scale), 1)  # Python round, as upstream
    return math.ceil(min(t, _MAX_FRAMES) / nt), math.ceil(rh / nh), math.ceil(rw / nw)


def axis_windows(n: int, size: int, shifted: bool) -> list[tuple[int, int]]:
    """``[start, end)`` windows along one axis of length ``n``; empty shifted windows are dropped."""
    if not shifted:
        return [(i * size, min((i + 1) * size, n)) for i in range(math.ceil(n / size))]
    s = 0.5 if size < n else 0.0
    count = math.ceil((n - s) / size) + 1 if s else 1
    spans = [(max(int((i - s) * size), 0), min(int((i - s + 1) * size), n)) for i in range(count)]
    return [(a, b) for a, b in spans if b > a]


@dataclass(frozen=True)
class WindowGroup:
    """Windows of one shape and text length: one batched attention call (or a few, chunked)."""

    vid_idx: torch.Tensor  # (n, f*h*w) long: rows of the packed video tokens, (t, h, w) order
    txt_idx: torch.Tensor  # (n, L) long: rows of the packed text tokens of each window's sample
    cos: torch.Tensor  # (f*h*w + L, rot) fp32
    sin: torch.Tensor  # (f*h*w + L, rot) fp32

    @property
    def vid_len(self) -> int:
        return self.vid_idx.shape[1]


@dataclass(frozen=True)
class WindowPlan:
    """Everything a block needs about the batch layout for one call. Built per forward call."""

    groups: tuple[WindowGroup, ...]
    txt_windows: torch.Tensor  # (Lt, 1) fp32: window count of each text token's sample (text = mean)
    vid_counts: tuple[int, ...]  # video tokens per sample (after patchify)
    txt_counts: tuple[int, ...]  # text tokens per sample
    attention: str  # attention backend name (seedvr2.dit.attention)


def build_window_plan(
    token_grids: Sequence[tuple[int, int, int]],
    txt_lens: Sequence[int],
    *,
    num_windows: tuple[int, int, int],
    shifted: bool,
    rope: str,
    rope_axis_dim: int,
    attention: str,
    device: torch.device,
    window: tuple[int, int, int] | None = None,
) -> WindowPlan:
    """Partition every sample of a packed batch into windows and group them by shape. ``window``
    overrides the size from each grid's aspect (`window_size`)."""
    members: dict[tuple[int, int, int, int], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    windows_per_sample = []
    vid_offset = txt_offset = 0
    for (t, h, w), txt_len in zip(token_grids, txt_lens):
        rows = torch.arange(vid_offset, vid_offset + t * h * w).view(t, h, w)
        txt_rows = torch.arange(txt_offset, txt_offset + txt_len)
        wt, wh, ww = window or window_size((t, h, w), num_windows)
        count = 0
        for t0, t1 in axis_windows(t, wt, shifted):
            for h0, h1 in axis_windows(h, wh, shifted):
                for w0, w1 in axis_windows(w, ww, shifted):
                    vids, txts = members.setdefault((t1 - t0, h1 - h0, w1 - w0, txt_len), ([], []))
                    vids.append(rows[t0:t1, h0:h1, w0:w1].reshape(-1))
                    txts.append(txt_rows)
                    count += 1
        windows_per_sample.append(count)
        vid_offset += t * h * w
        txt_offset += txt_len

    freqs = rope_freqs(rope, rope_axis_dim).to(device)
    groups = []
    for (f, h, w, txt_len), (vids, txts) in members.items():
        cos, sin = window_rope(rope, freqs, (f, h, w), txt_len)
        groups.append(WindowGroup(torch.stack(vids).to(device), torch.stack(txts).to(device), cos, sin))
    txt_windows = torch.repeat_interleave(torch.tensor(windows_per_sample, dtype=torch.float32),
                                          torch.tensor(list(txt_lens)))[:, None].to(device)  # (Lt, 1)
    return WindowPlan(tuple(groups), txt_windows, tuple(t * h * w for t, h, w in token_grids), tuple(txt_lens),
                      attention)
