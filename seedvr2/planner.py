"""A whole-run memory plan: how many DiT blocks to swap and which VAE tile fit a given VRAM budget.

`plan_memory(dit, vae, frames_shape, settings, vram_bytes)` predicts the device peak of each
phase of `seedvr2.upscale` (encode, DiT, decode: one model on the device at a time) from closed
forms, and picks the fastest settings whose every peak fits ``vram_bytes - reserve``. It reads
only parameter sizes, block structure and configs, so the models may live on the meta device; it
never allocates.

Phase peaks (bytes):

* DiT = arena + activations + workspace. The arena is what block swap allocates at the phase
  start (`blockswap.engine`): IO + resident blocks + K x largest swapped block, each tensor
  256-byte aligned, with exactly the engine's choice of swapped blocks (`swapped_indices`).
  Activations per video token are derived from the block code below (`dit_activation_bytes`).
* encode / decode = VAE weights (the whole VAE moves) + workspace + the canvases when frames are
  not tiled (tiled runs keep them in host memory) + the larger of the VAE's working set for the
  largest tile and the pre-/post-processing temporaries (`seedvr2.pipeline.run`).

Choices, and why they are monotone (less VRAM never gives fewer swapped blocks or larger tiles):
blocks are tried from 0 swapped upwards with K = ``prefetch_blocks`` and the first count that fits
is taken; if none does, every block is swapped with K = 1; if that does not fit either and the
batch is a single latent frame (an image, or batch_size 1), the DiT runs in spatial tiles
(`seedvr2.dit.tiling`), tried from the largest down to the floor, all blocks swapped, K = 1. The
DiT peak of a tiled plan counts the block activations of the largest tile and the pipeline
tensors of the whole frame (`_dit_activations`). Multi-frame batches are never tiled by the plan:
a smaller batch is the exact remedy, and the plan says so. Tiles are tried from whole frames down
to `MIN_AUTO_TILE` and the first that fits both VAE phases is taken. Taking the first fitting
candidate of a fixed order is monotone in the budget whatever the cost curve looks like: a
candidate that fits a smaller budget fits every larger one. A plan that does not fit keeps the
smallest settings (all blocks, K = 1, the floor tiles) and says why, with the minimum VRAM that
would fit; `fits` is True only if every phase peak is at most ``vram_bytes - reserve_bytes``.

The model terms are constants with their provenance; the ones marked "first estimate" wait for a
GPU calibration with `bench/fit_cards.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .dit.tiling import DiTTiles, plan_dit_tiles
from .color import WAVELET_HALO
from .pipeline.run import CHUNK_PIXELS, POST_TILE_PIXELS
from .pipeline.settings import UpscaleSettings, check_settings
from .preprocess import padded_frame_count, plan_geometry
from .vae.model import DEFAULT_CHUNK_FRAMES, DEFAULT_TILE_OVERLAP
from .vae.tiling import split_axis

try:  # inside the ComfyUI pack, `blockswap` is our sibling package
    from ..blockswap.config import BlockSwapConfig
    from ..blockswap.host import _align
except ImportError:  # `seedvr2` imported from the repository root
    from blockswap.config import BlockSwapConfig
    from blockswap.host import _align

__all__ = ["MemoryPlan", "plan_memory", "dit_activation_bytes", "default_reserve_bytes", "PHASES"]

GiB = 1 << 30
MiB = 1 << 20
PHASES = ("encode", "dit", "decode")

# --- DiT activations (derived from seedvr2/dit/block.py, attention.py, layers.py) -------------------
# Per video token (one 1x2x2 patch of latent), with a = activation itemsize, d = dim, m = MLP hidden:
# * attention phase, alive together: the block input, the modulated input, qkv (3 d), the normed q
#   and k (2 d), the scattered output rows: 7 a d; plus fp32 RMSNorm temporaries of q/k (2 x 4 d,
#   transient). -> 7 a d + 8 d
# * MLP phase: the block input, modulated attention input and attention output (locals alive until
#   the block returns), the residual after attention, the modulated MLP input: 5 a d; plus the
#   hidden: SwiGLU (3B) holds silu(gate), proj_in and their product, 3 a m; the GELU MLP (7B) holds
#   proj_in's output and the GELU's, 2 a m.
# * one attention call gathers at most MAX_QUERY_TOKENS_PER_CALL tokens (attention.py): q, k, v
#   copies (3 a d), fp32 rope temporaries (4 tensors of 4 d bytes), roped q and k (2 a d), the
#   output (a d): (6 a + 16) d per gathered token, on top of the attention phase.
# * pipeline tensors of the DiT phase (run.py `_denoise`), fp32 per latent pixel, 4 per token:
#   vid (33 ch), noise, condition, prediction, x0 (16 ch each), ones (1): 98 x 4 x 4 B.
# Window plans add two int64 index rows per token (16 B). Measured reference (another
# implementation, numz + flash-attn, 7B): 128.5 KiB per token (landscape.md, hekmon vram.md); ours
# derives to 78 KiB (7B) and 66 KiB (3B) before slack.
ATTENTION_CALL_TOKENS = 16384  # seedvr2.dit.attention.MAX_QUERY_TOKENS_PER_CALL
DIT_IO_BYTES_PER_TOKEN = 98 * 4 * 4 + 16
DIT_ACTIVATION_SLACK = 1.25  # allocator rounding and fragmentation; first estimate pending GPU calibration
# DiT tiles (seedvr2/dit/tiling.py): the float32 accumulator of the blended prediction, 16 channels
# per latent pixel (4 per token), on top of the whole frame's pipeline tensors; each tile's own
# crop and prediction are counted like a batch of the tile's size (DIT_IO_BYTES_PER_TOKEN).
DIT_TILE_ACCUMULATOR_BYTES_PER_TOKEN = 16 * 4 * 4
# Tile sizes the planner tries: tile budgets shrink by this factor from the whole frame to the floor.
DIT_TILE_STEP = 0.8

# --- VAE working set (per pixel of the largest tile, bf16, 4-frame causal chunks, state on device) ---
# decode: H200 bf16, bench/vae_tiling.py (README "Measured"): untiled working set 0.97 GiB at 256^2
# and 3.83 GiB at 512^2 -> slope 15.6 KB per output pixel (intercept ~0). hekmon's numz measurement
# (16.1 GiB per output Mpx = 17.3 KB/px) agrees within 10 %.
VAE_DECODE_BYTES_PER_PIXEL = 15_600
# encode: the decode figure x 0.547, the encode/decode ratio measured by hekmon (8.8 vs 16.1 GiB per
# Mpx) and given by the tensor accounting in seedvr2/vae/model.py (7.4 vs 13.6 KB/px). First
# estimate pending GPU calibration.
VAE_ENCODE_BYTES_PER_PIXEL = 8_500
# Share of that working set which is causal state carried between chunks (tensor accounting in
# seedvr2/vae/model.py: ~60 % decode, ~50 % encode). A single frame (one chunk) carries none, and the
# chunk's own part scales with its frames plus the 2 frames of causal padding.
VAE_STATE_SHARE = {"encode": 0.5, "decode": 0.6}
# Pre/post-processing temporaries on the device (run.py), fp32 RGB = 12 B per pixel per tensor, for
# one chunk of CHUNK_PIXELS: encode reads input frames (1 tensor at input size) and resizes, pads and
# rescales them (3 at canvas size); decode moves the decoded chunk to fp32, reads and resizes the
# input for the colour fix and runs it (wavelet: ~8 tensors at output size, counted from color.py).
PRE_TENSORS = {"input": 1, "canvas": 3}
POST_TENSORS = {"input": 1, "output": 10}
# Frames of more than POST_TILE_PIXELS output pixels are post-processed one at a time in row bands
# (run.py `_post_process_bands`): the input frame (1 tensor), its colour-fix reference kept whole (1
# tensor at the resized size: the same resize as whole frames), and the POST_TENSORS["output"]
# temporaries of one band of about POST_TILE_PIXELS (at least 1 + 2 x WAVELET_HALO rows), instead
# of those of the whole frame. A 16K image: 15.0 -> 2.4 GiB of post-processing temporaries.
POST_BAND_TENSORS = {"input": 1, "reference": 1}
# cuBLAS/cuDNN workspaces and the allocator's rounding, per phase. First estimate pending GPU calibration.
WORKSPACE_BYTES = 384 * MiB
# Budget kept free (fragmentation, other processes' growth): 512 MiB + 3 % of the budget. With a
# budget of "free memory" this matches hekmon's validated rule "each phase's peak <= card - 2 GiB"
# on an N GB card, whose free memory is about N - 1.44 GiB (CUDA context, driver, desktop).
RESERVE_BASE_BYTES = 512 * MiB
RESERVE_FRACTION = 0.03

TILE_CANDIDATES = (2048, 1792, 1536, 1344, 1280, 1152, 1024, 896, 768, 640, 512, 448, 384, 320, 256, 192, 128)
MIN_AUTO_TILE = 128  # px: the floor of auto tiles and of the out-of-memory fallback


def default_reserve_bytes(vram_bytes: int) -> int:
    return int(RESERVE_BASE_BYTES + RESERVE_FRACTION * vram_bytes)


@dataclass(frozen=True)
class MemoryPlan:
    """A run's memory plan (see the module docstring). Sizes in bytes.

    blocks_to_swap/prefetch_blocks: for `handle.reconfigure()`; vae_tile_size (None = whole frames),
    vae_tile_overlap, vae_chunk_frames: for `VAETiling`; dit_tile_tokens: the DiT's
    spatial tiles, the most tokens per latent frame of one tile (`seedvr2.dit.tiling.run_dit`; None =
    whole frames); peak_bytes: predicted device peak of each
    phase ("encode", "dit", "decode"); fits: every peak <= vram_bytes - reserve_bytes; reason: why
    not (with the minimum VRAM that would fit), "" when it fits; max_batch_size: the largest 4n+1
    batch (up to the clip's length) that would fit this budget, 0 when none does.
    """

    blocks_to_swap: int
    prefetch_blocks: int
    vae_tile_size: int | None
    vae_chunk_frames: int | None
    peak_bytes: dict[str, int]
    fits: bool
    reason: str
    vae_tile_overlap: int = DEFAULT_TILE_OVERLAP
    vram_bytes: int = 0
    reserve_bytes: int = 0
    min_vram_bytes: int = 0
    max_batch_size: int = 0
    blocks_total: int = 0
    model_name: str = "DiT"
    batch_size: int = 1
    dit_tokens: int = 0
    dit_tile_tokens: int | None = None
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def summary(self) -> str:
        """One readable line, e.g. "7B fp16 on 11.2 GiB free: 30/36 blocks swapped, K=2, VAE tiles
        768, peaks encode 6.1 / DiT 9.8 / decode 10.4 GiB, largest batch 33"; with DiT tiles, after
        K: "DiT in 3x3 tiles of 3360x1920 px"."""
        tiles = "whole frames" if self.vae_tile_size is None else str(self.vae_tile_size)
        dit_tiles = f"DiT in {self.details.get('dit_tiles')}, " if self.dit_tile_tokens is not None else ""
        peaks = " / ".join(f"{'DiT' if p == 'dit' else p} {self.peak_bytes[p] / GiB:.1f}" for p in PHASES)
        text = (f"{self.model_name} on {self.vram_bytes / GiB:.1f} GiB free: {self.blocks_to_swap}/{self.blocks_total} "
                f"blocks swapped, K={self.prefetch_blocks}, {dit_tiles}VAE tiles {tiles}, peaks {peaks} GiB, "
                f"largest batch {self.max_batch_size}")
        return text if self.fits else f"{text}; DOES NOT FIT: {self.reason}"


def plan_memory(dit: nn.Module, vae: nn.Module, frames_shape: tuple[int, ...], settings: UpscaleSettings,
                vram_bytes: int, *, reserve_bytes: int | None = None, prefetch_blocks: int = 2,
                tile_overlap: int = DEFAULT_TILE_OVERLAP, placement: str = "spread") -> MemoryPlan:
    """Plan `seedvr2.upscale` of frames shaped `frames_shape` (T, H, W, C) with `settings` on a
    device with `vram_bytes` to spend (see the module docstring). `dit`/`vae` may be on the meta
    device. `reserve_bytes` (default `default_reserve_bytes`) stays free; `prefetch_blocks`,
    `tile_overlap` and `placement` are the block swap and VAE settings the run will use."""
    problem = _check_args(frames_shape, settings, vram_bytes, reserve_bytes)
    if problem:
        raise ValueError(problem)
    model = _ModelTerms.read(dit, vae, prefetch_blocks, placement)
    reserve = default_reserve_bytes(vram_bytes) if reserve_bytes is None else int(reserve_bytes)
    plan = _plan(model, frames_shape, settings, vram_bytes, reserve, tile_overlap, fixed_reserve=reserve_bytes)
    largest = _largest_batch(model, frames_shape, settings, vram_bytes, reserve, tile_overlap)
    return replace(plan, max_batch_size=largest)


# ---------------------------------------------------------------------------------------------------
# Model terms read from the modules (no allocation)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ModelTerms:
    name: str
    block_bytes: tuple[int, ...]
    io_bytes: int
    dim: int
    mlp_hidden: int
    swiglu: bool
    act_bytes: int
    vae_weight_bytes: int
    vae_bytes: int  # VAE activation itemsize
    prefetch: int
    placement: str
    num_windows: tuple[int, int, int] = (4, 3, 3)

    @classmethod
    def read(cls, dit: nn.Module, vae: nn.Module, prefetch: int, placement: str) -> "_ModelTerms":
        blocks = getattr(dit, "blocks", None)
        config = getattr(dit, "config", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0 or config is None:
            raise ValueError("plan_memory: dit must be a SeedVR2 DiT (seedvr2.build_dit/load_dit), with `blocks` "
                             f"and `config`; got {type(dit).__name__}")
        BlockSwapConfig(prefetch_blocks=prefetch, placement=placement)  # validates both, naming them
        block_bytes, io_bytes = _dit_bytes(dit, len(blocks))
        compute = getattr(dit, "compute_dtype", None) or torch.bfloat16
        vae_dtype = _main_dtype(vae)
        return cls(name=_model_name(dit, config), block_bytes=block_bytes, io_bytes=io_bytes, dim=config.dim,
                   mlp_hidden=config.mlp_hidden, swiglu=config.mlp == "swiglu", act_bytes=compute.itemsize,
                   vae_weight_bytes=_tensor_bytes(vae, set()),
                   vae_bytes=vae_dtype.itemsize if vae_dtype.is_floating_point and vae_dtype.itemsize >= 2 else 2,
                   prefetch=prefetch, placement=placement, num_windows=tuple(config.num_windows))

    @property
    def num_blocks(self) -> int:
        return len(self.block_bytes)

    def arena_bytes(self, swapped: int, k: int) -> int:
        """Device weights in the DiT phase: IO + residents + K x largest swapped block."""
        idx = set(BlockSwapConfig(blocks_to_swap=swapped, placement=self.placement).swapped_indices(self.num_blocks))
        residents = sum(b for i, b in enumerate(self.block_bytes) if i not in idx)
        ring = min(k, len(idx)) * max((self.block_bytes[i] for i in idx), default=0)
        return self.io_bytes + residents + ring


def _dit_bytes(dit: nn.Module, num_blocks: int) -> tuple[tuple[int, ...], int]:
    """Bytes per block and outside the blocks, in one pass (tied tensors counted once, by their
    first owner, as block swap packs them), 256-byte aligned as in block swap's masters."""
    per_block = [0] * num_blocks
    io = 0
    seen: set[int] = set()
    for name, t in [*dit.named_parameters(), *dit.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        parts = name.split(".", 2)
        size = _align(t.numel() * t.element_size())
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
            per_block[int(parts[1])] += size
        else:
            io += size
    return tuple(per_block), io


def _tensor_bytes(module: nn.Module, seen: set[int]) -> int:
    """Bytes of every parameter and buffer not yet `seen`, 256-byte aligned as in block swap's masters."""
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _align(t.numel() * t.element_size())
    return total


def _main_dtype(module: nn.Module) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for p in module.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.bfloat16


_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.uint8: "quantized",
                getattr(torch, "float8_e4m3fn", None): "fp8", getattr(torch, "float8_e5m2", None): "fp8"}


def _model_name(dit: nn.Module, config: Any) -> str:
    size = {(32, 2560): "3B", (36, 3072): "7B"}.get((config.num_layers, config.dim))
    if size is None:
        size = f"{sum(p.numel() for p in dit.parameters()) / 1e9:.1f}B"
    dtype = _main_dtype(dit.blocks)
    return f"{size} {_DTYPE_NAMES.get(dtype, str(dtype).replace('torch.', ''))}"


# ---------------------------------------------------------------------------------------------------
# Phase costs
# ---------------------------------------------------------------------------------------------------

def dit_activation_bytes(tokens: int, dim: int, mlp_hidden: int, *, swiglu: bool, act_bytes: int = 2) -> int:
    """Predicted DiT activation peak for `tokens` video tokens (derivation in the module constants)."""
    a, d, m = act_bytes, dim, mlp_hidden
    gathered = min(tokens, ATTENTION_CALL_TOKENS)
    attention = tokens * (7 * a * d + 8 * d) + gathered * (6 * a + 16) * d
    mlp = tokens * (5 * a * d + (3 if swiglu else 2) * a * m)
    return int(DIT_ACTIVATION_SLACK * (max(attention, mlp) + tokens * DIT_IO_BYTES_PER_TOKEN))


@dataclass(frozen=True)
class _Shape:
    """The sizes of the run's largest batch."""

    frames: int          # padded to 4n+1
    latent_frames: int
    canvas: tuple[int, int]
    input_px: int
    output_px: int
    resized_px: int

    @property
    def tokens(self) -> int:
        return self.latent_frames * (self.canvas[0] // 16) * (self.canvas[1] // 16)

    @property
    def canvas_px(self) -> int:
        return self.canvas[0] * self.canvas[1]


def _shape(frames_shape: tuple[int, ...], settings: UpscaleSettings) -> _Shape:
    t, h, w = frames_shape[:3]
    geo = plan_geometry(h, w, settings.resize_rule)
    frames = padded_frame_count(min(settings.batch_size, t))
    return _Shape(frames, (frames - 1) // 4 + 1, geo.canvas_hw, h * w, geo.output_hw[0] * geo.output_hw[1],
                  geo.resized_hw[0] * geo.resized_hw[1])


def _dit_activations(m: _ModelTerms, shape: _Shape, tiles: DiTTiles | None = None) -> int:
    """The DiT phase's activations: the whole batch's, or with tiles the largest tile's plus the
    whole frame's pipeline tensors and the blend accumulator."""
    if tiles is None:
        return dit_activation_bytes(shape.tokens, m.dim, m.mlp_hidden, swiglu=m.swiglu, act_bytes=m.act_bytes)
    tile = dit_activation_bytes(tiles.tile_tokens * shape.latent_frames, m.dim, m.mlp_hidden, swiglu=m.swiglu,
                                act_bytes=m.act_bytes)
    frame = shape.tokens * (DIT_IO_BYTES_PER_TOKEN + DIT_TILE_ACCUMULATOR_BYTES_PER_TOKEN)
    return tile + int(DIT_ACTIVATION_SLACK * frame)


def _dit_peak(m: _ModelTerms, shape: _Shape, swapped: int, k: int, tiles: DiTTiles | None = None) -> int:
    return m.arena_bytes(swapped, k) + _dit_activations(m, shape, tiles) + WORKSPACE_BYTES


def _dit_tile_options(m: _ModelTerms, shape: _Shape) -> list[DiTTiles]:
    """The tilings the plan may use: single latent frames only, and only tiles that lower the DiT
    peak below the untiled one (the whole frame's pipeline tensors stay)."""
    if shape.latent_frames != 1:
        return []
    untiled = _dit_activations(m, shape)
    return [t for t in _dit_tile_candidates(m, shape) if _dit_activations(m, shape, t) < untiled]


def _dit_tile_candidates(m: _ModelTerms, shape: _Shape) -> list[DiTTiles]:
    """DiT tilings of the batch, largest tile first, down to the floor: what `plan_dit_tiles`
    gives for tile budgets shrinking by `DIT_TILE_STEP` (each is exactly what `run_dit` rebuilds
    from its ``tile_tokens``). Empty when the frame is too small to split."""
    latent = (shape.canvas[0] // 8, shape.canvas[1] // 8)
    budget = (latent[0] // 2) * (latent[1] // 2)
    out: list[DiTTiles] = []
    while budget > 1:
        budget = int(budget * DIT_TILE_STEP)
        tiles = plan_dit_tiles(latent, budget, m.num_windows, latent_frames=shape.latent_frames)
        if tiles.count == 1:
            break  # no split at all
        if not out or tiles.tile_tokens < out[-1].tile_tokens:
            out.append(tiles)
        if tiles.tile_tokens > budget:
            break  # the floor
    return out


def _tile_extent(canvas: tuple[int, int], tile: int | None, overlap: int) -> tuple[int, int]:
    """Pixels (h, w) of the largest tile, from the VAE's own tile geometry."""
    if tile is None:
        return canvas
    cells = [max(s.stop - s.start for s in split_axis(side // 8, tile // 8, math.ceil(overlap / 8))) for side in canvas]
    return cells[0] * 8, cells[1] * 8


def tile_overlap_for(tile: int | None, overlap: int) -> int:
    """The overlap used with `tile`: the requested one, shrunk (to 8 px steps) so that it stays
    within a third of the tile, as the VAE requires."""
    if tile is None:
        return overlap
    return min(overlap, (tile // 8 // 3) * 8)


def _vae_peak(m: _ModelTerms, shape: _Shape, phase: str, tile: int | None, overlap: int) -> int:
    th, tw = _tile_extent(shape.canvas, tile, tile_overlap_for(tile, overlap))
    per_px = (VAE_ENCODE_BYTES_PER_PIXEL if phase == "encode" else VAE_DECODE_BYTES_PER_PIXEL) * m.vae_bytes / 2
    chunk_frames = 1 if shape.frames == 1 else DEFAULT_CHUNK_FRAMES
    share = VAE_STATE_SHARE[phase] if shape.frames > 1 else 0.0
    per_px *= share + (1 - share) * (chunk_frames + 2) / (DEFAULT_CHUNK_FRAMES + 2)
    work = int(th * tw * per_px)
    latent_px = shape.latent_frames * shape.canvas_px // 64
    canvases = 0
    if tile is None:  # canvases on the device (run.py `vae_io_device`)
        pixels = 3 * shape.frames * shape.canvas_px
        canvases = (pixels + (32 if phase == "encode" else 16) * latent_px) * m.vae_bytes
    frame_px = max(shape.canvas_px, shape.resized_px)
    chunk = min(shape.frames, max(1, CHUNK_PIXELS // frame_px))
    if phase == "encode":
        temps = 12 * chunk * (PRE_TENSORS["input"] * shape.input_px + PRE_TENSORS["canvas"] * shape.canvas_px)
    elif shape.output_px > POST_TILE_PIXELS:
        band_px = max(POST_TILE_PIXELS, (1 + 2 * WAVELET_HALO) * shape.canvas[1])
        temps = 12 * (POST_BAND_TENSORS["input"] * shape.input_px + POST_BAND_TENSORS["reference"] * shape.resized_px
                      + POST_TENSORS["output"] * band_px)
    else:
        temps = 12 * chunk * (POST_TENSORS["input"] * shape.input_px + POST_TENSORS["output"] * shape.output_px)
    return m.vae_weight_bytes + WORKSPACE_BYTES + canvases + max(work, temps)


def _tile_candidates(canvas: tuple[int, int]) -> list[int | None]:
    """Whole frames, then one tile covering the frame (canvases in host memory), then smaller tiles."""
    side = max(canvas)
    cover = -(-side // 64) * 64
    tiles = sorted({t for t in TILE_CANDIDATES if t < side} | {max(cover, MIN_AUTO_TILE)}, reverse=True)
    return [None, *tiles]


# ---------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------

def _plan(m: _ModelTerms, frames_shape: tuple[int, ...], settings: UpscaleSettings, vram: int, reserve: int,
          overlap: int, fixed_reserve: int | None = None) -> MemoryPlan:
    shape = _shape(frames_shape, settings)
    usable = vram - reserve
    # DiT: the fewest swapped blocks that fit with K; failing that, all blocks with K = 1; failing
    # that (single latent frames only), the largest tiles that fit, else the floor tiles.
    swapped, k, tiles = m.num_blocks, 1, None
    for s in range(m.num_blocks + 1):
        if _dit_peak(m, shape, s, m.prefetch) <= usable:
            swapped, k = s, m.prefetch
            break
    tile_options = _dit_tile_options(m, shape)
    if k == 1 and _dit_peak(m, shape, swapped, k) > usable and tile_options:
        tiles = next((t for t in tile_options if _dit_peak(m, shape, swapped, k, t) <= usable), tile_options[-1])
    dit = _dit_peak(m, shape, swapped, k, tiles)
    # VAE: the largest tile that fits both phases.
    candidates = _tile_candidates(shape.canvas)
    tile = candidates[-1]
    for candidate in candidates:
        if max(_vae_peak(m, shape, p, candidate, overlap) for p in ("encode", "decode")) <= usable:
            tile = candidate
            break
    peaks = {"encode": _vae_peak(m, shape, "encode", tile, overlap), "dit": dit,
             "decode": _vae_peak(m, shape, "decode", tile, overlap)}
    fits = max(peaks.values()) <= usable
    # The smallest plan's peaks set the minimum VRAM: V - reserve(V) >= peak.
    floor_peak = max(_dit_peak(m, shape, m.num_blocks, 1, tile_options[-1] if tile_options else None),
                     *(_vae_peak(m, shape, p, candidates[-1], overlap) for p in ("encode", "decode")))
    min_vram = _min_vram(floor_peak, fixed_reserve)
    reason = "" if fits else _why(m, shape, peaks, usable, swapped, tile, min_vram, settings, tiles)
    act = _dit_activations(m, shape, tiles)
    return MemoryPlan(
        blocks_to_swap=swapped, prefetch_blocks=k, vae_tile_size=tile, vae_chunk_frames=DEFAULT_CHUNK_FRAMES,
        peak_bytes=peaks, fits=fits, reason=reason, vae_tile_overlap=tile_overlap_for(tile, overlap),
        vram_bytes=vram, reserve_bytes=reserve, min_vram_bytes=min_vram, blocks_total=m.num_blocks,
        model_name=m.name, batch_size=settings.batch_size, dit_tokens=shape.tokens,
        dit_tile_tokens=None if tiles is None else tiles.tile_tokens,
        details={"dit_weights": m.arena_bytes(swapped, k), "dit_activations": act, "canvas_hw": shape.canvas,
                 "padded_frames": shape.frames, "dit_tiles": None if tiles is None else tiles.describe()})


def _min_vram(peak: int, fixed_reserve: int | None) -> int:
    if fixed_reserve is not None:
        return peak + fixed_reserve
    return math.ceil((peak + RESERVE_BASE_BYTES) / (1 - RESERVE_FRACTION))


def _why(m: _ModelTerms, shape: _Shape, peaks: dict[str, int], usable: int, swapped: int, tile: int | None,
         min_vram: int, settings: UpscaleSettings, tiles: DiTTiles | None = None) -> str:
    over = [p for p in PHASES if peaks[p] > usable]
    parts = []
    if "dit" in over:
        act = _dit_activations(m, shape, tiles)
        if peaks["dit"] - act > usable:  # weights and workspace alone: no batch or resolution helps
            parts.append(f"the DiT phase needs {peaks['dit'] / GiB:.1f} GiB with all {swapped} blocks swapped, "
                         f"{(peaks['dit'] - act) / GiB:.1f} GiB of it for the model's weights on the device and "
                         "workspace alone, whatever the batch_size or resolution; free VRAM, or use a smaller "
                         "or quantized model")
        elif tiles is None:
            parts.append(f"the DiT phase needs {peaks['dit'] / GiB:.1f} GiB with all {swapped} blocks swapped "
                         f"({act / GiB:.1f} GiB of activations for {shape.tokens} tokens at batch "
                         f"{settings.batch_size}); use a smaller batch_size or resolution")
        else:
            parts.append(f"the DiT phase needs {peaks['dit'] / GiB:.1f} GiB with all {swapped} blocks swapped "
                         f"in its smallest tiles ({tiles.describe()}, {act / GiB:.1f} GiB of activations); "
                         "use a smaller resolution")
    vae = [p for p in over if p != "dit"]
    if vae:
        parts.append(f"VAE {' and '.join(vae)} need{'s' if len(vae) == 1 else ''} "
                     f"{max(peaks[p] for p in vae) / GiB:.1f} GiB even with {tile}-px tiles")
    return (f"{'; '.join(parts)}; {max(usable, 0) / GiB:.1f} GiB usable after the reserve, "
            f"at least {min_vram / GiB:.1f} GiB of VRAM would fit these settings")


def _largest_batch(m: _ModelTerms, frames_shape: tuple[int, ...], settings: UpscaleSettings, vram: int,
                   reserve: int, overlap: int) -> int:
    """The largest 4n+1 batch up to the clip's length whose plan fits (binary search: the peaks
    grow with the batch)."""
    top = (padded_frame_count(frames_shape[0]) - 1) // 4

    def fits(n: int) -> bool:
        b = 4 * n + 1
        s = replace(settings, batch_size=b, temporal_overlap=min(settings.temporal_overlap, b - 1))
        return _plan(m, frames_shape, s, vram, reserve, overlap).fits

    if not fits(0):
        return 0
    lo, hi = 0, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return 4 * lo + 1


def _check_args(frames_shape: Any, settings: Any, vram_bytes: Any, reserve_bytes: Any) -> str:
    if not isinstance(settings, UpscaleSettings):
        return f"plan_memory: settings must be an UpscaleSettings, got {type(settings).__name__}"
    check_settings(settings)
    shape = tuple(frames_shape) if isinstance(frames_shape, (tuple, list, torch.Size)) else None
    if shape is None or len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape):
        return f"plan_memory: frames_shape must be (frames, height, width, channels) positive integers, got {frames_shape!r}"
    for name, value in (("vram_bytes", vram_bytes), ("reserve_bytes", reserve_bytes)):
        if value is None and name == "reserve_bytes":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"plan_memory: {name} must be a non-negative integer number of bytes, got {value!r}"
    return ""
