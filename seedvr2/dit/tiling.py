"""Spatial tiling of the DiT: frames whose activations exceed the budget run as overlapping tiles.

A very large single image (8K-16K output) has hundreds of thousands of video tokens; the DiT's
activations grow with them (tens of KiB per token) while block swap only bounds the weights. Here
the latent grid of a batch is split spatially (every latent frame of the batch stays in every
tile) into overlapping tiles, the DiT runs once per tile on the crop of the full input (noise,
condition and mask: the tile's input *is* the full input's crop, so the result is deterministic
and does not depend on anything but the geometry), and the predictions are blended across the
overlaps with the VAE's linear ramps (`seedvr2.vae.tiling.Span` / `blend_weights`).

Why tiles can be nearly exact, and how they are placed. The NaDiT is local except for two things:
window attention and the text stream.

* Windows. The official window size depends on the aspect ratio of the sample's token grid
  (`seedvr2.dit.windows.window_size`: the grid rescaled to the area of a 720p grid, split 3 x 3),
  and windows are laid out from the grid's origin (regular blocks) or shifted by half a window
  (odd blocks). Each tile is run with the *whole grid's* window size (``NaDiT.forward(...,
  window=)``) and starts on a multiple of it, so every window that lies inside a tile is exactly
  the untiled window, with the same (window-local) rope positions, in regular and shifted blocks.
  Only windows cut by a tile edge differ; their error enters at the tile edge and spreads inwards
  by up to half a window per block. Along each axis the grid is split into near-equal cores on
  window boundaries, and every tile but the first also covers the last ``overlap_windows`` windows
  of the previous core: neighbours share exactly that many windows, non-neighbours nothing. Tile
  edges fall on regular-window boundaries, so the windows a tile cuts are the shifted ones at its
  edges, half a window deep; in the shared part each tile gets weight 0 on its own cut half
  window and a linear ramp (`seedvr2.vae.tiling.blend_weights`) runs over the rest (one window
  with the default 2 shared). Measured on the tiny DiT, that margin cuts the largest error 3x
  against a ramp over the whole overlap.
* Text. Each text token's output is the mean over its sample's windows, so the text stream of a
  tile sees only that tile's windows: a per-tile global term (like a per-tile GroupNorm in the
  VAE). The ramps spread the tile-to-tile difference over the whole overlap, leaving no seam.

Invariants (tests/test_dit_tiles.py): tiles cover the grid and start on window boundaries,
neighbours share exactly ``overlap_windows`` windows, only neighbours overlap, every output cell's
weights sum to 1 and each tile's cut half windows get none; one tile
covering the grid calls the DiT exactly once with the unchanged inputs (bit-identical result);
the result is deterministic. Tiles are cut at token (1x2x2 patch) granularity, i.e. 2 latent
pixels, 16 output pixels.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..vae.tiling import Span, blend_weights
from .windows import window_size

__all__ = ["DiTTiles", "plan_dit_tiles", "run_dit", "tile_weights", "MIN_TILE_WINDOWS", "OVERLAP_WINDOWS",
           "PATCH"]

log = logging.getLogger("seedvr2")

PATCH = 2               # latent pixels per token along h and w (patch 1x2x2)
# Measured on the tiny DiT, 2x1 tiles of a 90x160-token grid: 2 shared windows with the margin blend
# give max |tiled - untiled| 0.07 against 0.12 with 1; tiles of at least 5 windows (3 of core) keep
# the overlap work <= (5/3)^2 = 2.8x the untiled tokens at the floor.
MIN_TILE_WINDOWS = 5    # a tile spans at least this many windows per axis (unless it is the whole axis)
OVERLAP_WINDOWS = 2     # neighbouring tiles share exactly this many windows per axis


@dataclass(frozen=True)
class DiTTiles:
    """Tiles of one batch's token grid. Spans are in tokens (x `PATCH` for latent pixels).

    grid: the batch's token grid (t, H, W); window: its window size (wt, wh, ww), which every tile
    is run with; rows/cols: the tiles along H and W (a tile is one row span x one column span).
    """

    grid: tuple[int, int, int]
    window: tuple[int, int, int]
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def tile_hw(self) -> tuple[int, int]:
        """The largest tile (tokens along H, W)."""
        return max(s.stop - s.start for s in self.rows), max(s.stop - s.start for s in self.cols)

    @property
    def tile_tokens(self) -> int:
        """Tokens per latent frame of the largest tile (what sets the activation peak)."""
        return self.tile_hw[0] * self.tile_hw[1]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def tokens_processed(self) -> int:
        """Tokens the DiT processes over all tiles (the grid's plus the overlaps')."""
        return sum(r.stop - r.start for r in self.rows) * sum(c.stop - c.start for c in self.cols) * self.grid[0]

    def describe(self) -> str:
        """e.g. "2x3 tiles of 1920x1088 px" (rows x columns; W x H of the largest tile in output pixels)."""
        th, tw = self.tile_hw
        return f"{len(self.rows)}x{len(self.cols)} tiles of {tw * 16}x{th * 16} px"


def plan_dit_tiles(latent_hw: tuple[int, int], max_tile_tokens: int | None,
                   num_windows: tuple[int, int, int] = (4, 3, 3), *, latent_frames: int = 1, min_tile_windows: int | None = None,
                   overlap_windows: int | None = None) -> DiTTiles:
    """Tiles for a latent grid ``latent_hw`` (even sizes) with at most ``max_tile_tokens`` tokens
    per latent frame per tile (None: one tile, the whole grid).

    Of the splits (rows x columns) whose largest tile fits, it takes the one processing the fewest
    tokens in all (the least overlap work), then the fewest tiles. If none fits, the floor is
    returned: the smallest tiles, ``min_tile_windows`` windows per axis (an axis shorter than
    that is not split); callers compare ``tile_tokens`` with their budget. ``min_tile_windows``
    and ``overlap_windows`` default to `MIN_TILE_WINDOWS` and `OVERLAP_WINDOWS`.
    """
    h, w = latent_hw
    if h % PATCH or w % PATCH or h < PATCH or w < PATCH:
        raise ValueError(f"DiT tiles need an even latent grid, got {h}x{w} (H x W latent pixels)")
    min_windows = min_tile_windows or MIN_TILE_WINDOWS
    overlap = overlap_windows or OVERLAP_WINDOWS
    if min_windows <= 2 * overlap:
        raise ValueError(f"DiT tiles must span more than twice the windows they share: min_tile_windows "
                         f"{min_windows}, overlap_windows {overlap}")
    grid = (latent_frames, h // PATCH, w // PATCH)
    window = window_size(grid, num_windows)
    whole = DiTTiles(grid, window, (Span(0, grid[1], 0, 0),), (Span(0, grid[2], 0, 0),))
    if max_tile_tokens is None or grid[1] * grid[2] <= max_tile_tokens:
        return whole
    rows = _axis_splits(grid[1], window[1], min_windows, overlap)
    cols = _axis_splits(grid[2], window[2], min_windows, overlap)
    # (largest tile, tokens processed, tile count) of every rows x cols split, from per-axis sums
    costs = [(_longest(r) * _longest(c), _total(r) * _total(c), len(r) * len(c), i, j)
             for i, r in enumerate(rows) for j, c in enumerate(cols)]
    fitting = [c for c in costs if c[0] <= max_tile_tokens]
    if fitting:
        *_, i, j = min(fitting, key=lambda c: (c[1], c[2]))
    else:
        *_, i, j = min(costs, key=lambda c: (c[0], c[1]))
    return DiTTiles(grid, window, rows[i], cols[j])


def _longest(spans: tuple[Span, ...]) -> int:
    return max(s.stop - s.start for s in spans)


def _total(spans: tuple[Span, ...]) -> int:
    return sum(s.stop - s.start for s in spans)


@functools.lru_cache(maxsize=64)
def _axis_splits(n: int, step: int, min_windows: int, overlap: int) -> tuple[tuple[Span, ...], ...]:
    """Every split of ``[0, n)`` tokens into k = 1, 2, ... tiles (see the module docstring): cores
    on window boundaries (multiples of ``step``), as equal as the windows allow; each tile after the
    first reaches ``overlap`` windows back into the previous core. Stops at the floor: tiles of
    ``min_windows`` windows."""
    windows = math.ceil(n / step)
    splits = [(Span(0, n, 0, 0),)]
    for k in range(2, windows + 1):
        edges = [step * round(i * windows / k) for i in range(k)] + [n]
        cores = [b - a for a, b in zip(edges, edges[1:])]
        if min(cores) < (min_windows - overlap) * step:
            break  # tiles would fall below the floor (cores only shrink with k)
        shared = overlap * step
        splits.append(tuple(Span(a - (shared if i else 0), b, shared if i else 0, shared if i < k - 1 else 0)
                            for i, (a, b) in enumerate(zip(edges, edges[1:]))))
    return tuple(splits)


def tile_weights(span: Span, window: int) -> torch.Tensor:
    """1-D blend weights of a tile per latent pixel: 0 on the half window at each shared edge
    (the tile's cut shifted window, see the module docstring), a linear ramp over the rest of the
    overlap, 1 inside. Neighbours' weights sum to 1: the previous tile's zero margin (the end side
    gets ceil(window / 2)) meets this one's full weight and vice versa, and the ramps mirror."""
    lead = window // 2 if span.blend_in else 0
    tail = window - window // 2 if span.blend_out else 0
    inner = Span(span.start + lead, span.stop - tail, max(span.blend_in - window, 0) if span.blend_in else 0,
                 max(span.blend_out - window, 0) if span.blend_out else 0)
    weights = torch.zeros((span.stop - span.start) * PATCH, dtype=torch.float32)
    weights[lead * PATCH: (span.stop - span.start - tail) * PATCH] = blend_weights(inner, PATCH)
    return weights


def run_dit(dit: nn.Module, vid: torch.Tensor, txt: torch.Tensor, vid_shape: torch.Tensor, txt_shape: torch.Tensor,
            timestep: torch.Tensor, tile_tokens: int | None) -> torch.Tensor:
    """``dit(vid, txt, vid_shape, txt_shape, timestep)``, in spatial tiles of at most
    ``tile_tokens`` tokens per latent frame (None: one call). Same inputs and output as the DiT;
    one sample only when tiled. With one tile the DiT is called once with the unchanged inputs."""
    if tile_tokens is None:
        return dit(vid, txt, vid_shape, txt_shape, timestep)
    if vid_shape.shape[0] != 1:
        raise ValueError(f"DiT tiles take one sample at a time, got vid_shape with {vid_shape.shape[0]} samples")
    t, h, w = (int(v) for v in vid_shape[0].tolist())
    num_windows = tuple(getattr(getattr(dit, "config", None), "num_windows", (4, 3, 3)))
    tiles = plan_dit_tiles((h, w), tile_tokens, num_windows, latent_frames=t)
    if tiles.count == 1:
        return dit(vid, txt, vid_shape, txt_shape, timestep)
    log.debug("SeedVR2 DiT: %s (%.0f%% more tokens than untiled)", tiles.describe(),
              100 * (tiles.tokens_processed / (t * tiles.grid[1] * tiles.grid[2]) - 1))
    grid = vid.view(t, h, w, vid.shape[-1])
    out = None
    for row in tiles.rows:
        ys = slice(PATCH * row.start, PATCH * row.stop)
        for col in tiles.cols:
            xs = slice(PATCH * col.start, PATCH * col.stop)
            piece = grid[:, ys, xs].reshape(-1, grid.shape[-1])  # the full input's crop
            shape = torch.tensor([[t, ys.stop - ys.start, xs.stop - xs.start]], dtype=vid_shape.dtype,
                                 device=vid_shape.device)
            pred = dit(piece, txt, shape, txt_shape, timestep, window=tiles.window)
            del piece
            if out is None:
                out = torch.zeros((t, h, w, pred.shape[-1]), dtype=torch.float32, device=pred.device)
            weight = (tile_weights(row, tiles.window[1])[:, None] * tile_weights(col, tiles.window[2])).to(pred.device)
            out[:, ys, xs] += pred.view(t, ys.stop - ys.start, xs.stop - xs.start, -1).float() * weight[None, ..., None]
            del pred
    return out.reshape(t * h * w, -1).to(vid.dtype)
