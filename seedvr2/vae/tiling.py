"""Memory-bounded execution: spatial tiles with blended overlaps x causal temporal chunks.

Order of work: tile-outer, chunk-inner. Each spatial tile runs through the whole clip in temporal
chunks with its own `CausalCache`, so at any moment the working set is one tile, one chunk and
that tile's causal tails (a couple of frames per conv at tile size). Running chunk-outer instead
would have to keep the causal tails of *every* tile alive between chunks, which grows with the
frame size. Peak memory is therefore set by ``tile_size`` and ``chunk_frames`` only; the output
buffer (the result itself) can live elsewhere (``output_device``).

Geometry is planned on the latent grid, so pixel tiles always align with latent pixels. Along each
axis the extent is split into near-equal *cores*; every interior edge between two cores gets
``overlap`` cells of shared context (half on each side), and the two tiles blend linearly across
it. The weights of the two tiles at a cell are ``r`` and ``1 - r``, so they sum to one everywhere,
and ramps of one tile never meet because a core is at least one overlap wide.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .causal_conv import CausalCache

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in latent cells: ``[start, stop)``; ``blend_in``/``blend_out`` are
    the overlaps shared with the previous/next tile (0 at the ends of the axis)."""

    start: int
    stop: int
    blend_in: int
    blend_out: int


def split_axis(size: int, tile: int, overlap: int) -> list[Span]:
    """Cover ``[0, size)`` with the fewest tiles of at most ``tile`` cells, neighbours sharing
    exactly ``overlap`` cells, all tiles about the same size.

    With n tiles of size t the coverage is ``n * t - (n - 1) * overlap``, so
    ``n = ceil((size - overlap) / (tile - overlap))``. Needs ``tile >= 3 * overlap`` (checked by the
    caller): then every core is wider than one overlap, so a tile's two ramps never meet.
    """
    if size <= tile:
        return [Span(0, size, 0, 0)]
    count = math.ceil((size - overlap) / (tile - overlap))
    before, after = overlap // 2, overlap - overlap // 2  # odd overlaps: one more cell after the edge
    step = (size - overlap) / count  # core of an interior tile; edge cores are half an overlap wider
    edges = [0, *(before + round(i * step) for i in range(1, count)), size]  # core boundaries
    spans = []
    for i in range(count):
        start = edges[i] - (before if i > 0 else 0)
        stop = edges[i + 1] + (after if i < count - 1 else 0)
        spans.append(Span(start, stop, overlap if i > 0 else 0, overlap if i < count - 1 else 0))
    return spans


def blend_weights(span: Span, scale: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """1-D blend weights of a tile at ``scale`` output cells per latent cell: 1 in the interior,
    a linear ramp over each shared overlap. The next tile's ramp is ``r`` where this one is ``1 - r``.
    """
    n = (span.stop - span.start) * scale
    weights = torch.ones(n, dtype=torch.float64)
    if span.blend_in:
        weights[: span.blend_in * scale] = _ramp(span.blend_in * scale)
    if span.blend_out:
        weights[n - span.blend_out * scale:] = 1.0 - _ramp(span.blend_out * scale)
    return weights.to(dtype)


def _ramp(length: int) -> Tensor:
    """(i + 0.5) / length: symmetric about the middle, so the two tiles meet at 0.5 halfway."""
    return (torch.arange(length, dtype=torch.float64) + 0.5) / length


@dataclass(frozen=True)
class TimeChunk:
    """One temporal chunk: the input time range and the output time range it produces."""

    inputs: slice
    outputs: slice


def latent_chunks(latent_frames: int, latents_per_chunk: int | None) -> list[slice]:
    """Latent-frame ranges of the temporal chunks: the first latent alone, then
    ``latents_per_chunk`` at a time (None: the whole clip as one chunk, no causal state).

    Splitting the first frame off is mathematically identical to the official 1 + 4-frame first
    chunk (its causal tails are the repeated first frame either way) and lowers the peak chunk
    from 5 to 4 frames.
    """
    if latents_per_chunk is None or latent_frames == 1:
        return [slice(0, latent_frames)]
    starts = [0, *range(1, latent_frames, latents_per_chunk)]
    return [slice(a, min(b, latent_frames)) for a, b in zip(starts, [*starts[1:], latent_frames])]


def frames_of(latents: slice, temporal_factor: int) -> slice:
    """Pixel frames belonging to a range of latent frames: latent 0 <-> frame 0, latent j >= 1 <->
    frames ``[f(j-1) + 1, f j + 1)`` with f the temporal factor."""
    start = 0 if latents.start == 0 else temporal_factor * (latents.start - 1) + 1
    return slice(start, temporal_factor * (latents.stop - 1) + 1)


@dataclass(frozen=True)
class TilePlan:
    """Everything one tiled, chunked pass needs to know about geometry."""

    rows: list[Span]
    cols: list[Span]
    chunks: list[TimeChunk]
    in_scale: int  # input cells per latent cell (8 for encode, 1 for decode)
    out_scale: int  # output cells per latent cell (1 for encode, 8 for decode)

    @property
    def steps(self) -> int:
        return len(self.rows) * len(self.cols) * len(self.chunks)


def run_tiled(fn: Callable[[Tensor, CausalCache | None], Tensor], x: Tensor, out: Tensor, plan: TilePlan, *,
              device: torch.device, dtype: torch.dtype, cache_device: torch.device | str | None = None,
              on_tile: ProgressCallback | None = None, tile_batch: int = 1) -> Tensor:
    """Run ``fn(x_tile_chunk, cache) -> y_tile_chunk`` over every tile and chunk; blend into ``out``.

    ``x`` is (b, c, T_in, H_in, W_in) on any device; each tile chunk is moved to ``device``/``dtype``
    as it is needed. ``out`` (b, c', T_out, H_out, W_out) must be zero-filled when there is more
    than one tile. ``cache_device`` is where the causal state between chunks lives (None: ``device``).
    ``on_tile(done, total)`` is called after every step and may raise to cancel.

    ``tile_batch > 1``: up to that many tiles of the same size run together, stacked on the batch
    dim with one causal cache (every layer is per sample, so each tile gets its own result); the
    working set grows by that factor. Groups are formed by tile size in plan order; within a group
    the tiles are blended in plan order.
    """
    blended = len(plan.rows) * len(plan.cols) > 1
    tiles = [(row, col) for row in plan.rows for col in plan.cols]
    done = 0
    for group in _tile_groups(tiles, tile_batch):
        # (h_out, w_out) fp32 on the compute device: contributions are weighted before rounding
        weights = [(blend_weights(row, plan.out_scale)[:, None] * blend_weights(col, plan.out_scale)).to(device)
                   for row, col in group] if blended else None
        cache = None if len(plan.chunks) == 1 else CausalCache(cache_device)
        for chunk in plan.chunks:
            pieces = [x[:, :, chunk.inputs, _cells(row, plan.in_scale), _cells(col, plan.in_scale)] for row, col in group]
            piece = (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).to(device=device, dtype=dtype)
            del pieces
            result = fn(piece, cache)  # (k*b, c', t, h, w) of these tiles and this chunk
            del piece
            for i, (row, col) in enumerate(group):
                target = out[:, :, chunk.outputs, _cells(row, plan.out_scale), _cells(col, plan.out_scale)]
                part = result[i * out.shape[0]: (i + 1) * out.shape[0]]
                if part.shape != target.shape:
                    raise RuntimeError(f"VAE tile produced {tuple(part.shape)}, expected {tuple(target.shape)}")
                if blended:
                    target.add_((part.float() * weights[i]).to(device=out.device, dtype=out.dtype))
                else:
                    target.copy_(part)
            del result
            done += len(group)
            if on_tile is not None:
                on_tile(done, plan.steps)
    return out


def _cells(span: Span, scale: int) -> slice:
    return slice(span.start * scale, span.stop * scale)


def _tile_groups(tiles: list[tuple[Span, Span]], tile_batch: int) -> list[list[tuple[Span, Span]]]:
    """Tiles in plan order, gathered into groups of up to ``tile_batch`` tiles of equal size; a
    group is placed where its first tile is."""
    groups: list[list[tuple[Span, Span]]] = []
    open_groups: dict[tuple[int, int], list[tuple[Span, Span]]] = {}
    for row, col in tiles:
        size = (row.stop - row.start, col.stop - col.start)
        group = open_groups.get(size)
        if group is None or len(group) >= tile_batch:
            group = open_groups[size] = []
            groups.append(group)
        group.append((row, col))
    return groups
