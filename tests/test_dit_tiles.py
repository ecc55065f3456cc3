"""Spatial DiT tiles (`seedvr2.dit.tiling`): geometry, blend weights, tiled vs untiled on the tiny
DiT (error bounds and seams, measured like the VAE's in test_vae_tiling.py), exactness with one
tile, determinism, and an end-to-end `seedvr2.upscale` whose memory plan picks DiT tiles."""
from __future__ import annotations

import logging

import pytest
import torch

from seedvr2.dit import load_dit
from seedvr2.dit import tiling
from seedvr2.dit.tiling import PATCH, plan_dit_tiles, run_dit, tile_weights
from seedvr2.dit.windows import window_size
from seedvr2.vae import tiling as vae_tiling
from tiny_models import write_tiny_models

GRIDS = [(180, 320), (320, 180), (160, 160), (540, 960), (182, 322), (1080, 1920), (96, 1200), (36, 64)]


# ---------------------------------------------------------------------------------------------
# Geometry and weights
# ---------------------------------------------------------------------------------------------

def _budgets(hw):
    full = (hw[0] // 2) * (hw[1] // 2)
    return [None, full, full - 1, full // 2, full // 5, full // 17, 1]


@pytest.mark.parametrize("hw", GRIDS)
def test_tiles_cover_the_grid_on_window_boundaries_and_respect_the_budget(hw):
    for budget in _budgets(hw):
        tiles = plan_dit_tiles(hw, budget)
        t, big_h, big_w = tiles.grid
        assert tiles.window == window_size(tiles.grid, (4, 3, 3))
        if budget is None or big_h * big_w <= budget:
            assert tiles.count == 1
            continue
        for spans, n, step in ((tiles.rows, big_h, tiles.window[1]), (tiles.cols, big_w, tiles.window[2])):
            assert spans[0].start == 0 and spans[-1].stop == n
            assert all(s.start % step == 0 for s in spans)  # windows inside a tile are the untiled ones
            assert all(s.stop % step == 0 for s in spans[:-1])
            for a, b in zip(spans, spans[1:]):
                assert a.stop - b.start == tiling.OVERLAP_WINDOWS * step == a.blend_out == b.blend_in
            for a, c in zip(spans, spans[2:]):
                assert a.stop <= c.start  # only neighbours share cells
            if len(spans) > 1:
                assert min(s.stop - s.start for s in spans[1:]) >= tiling.MIN_TILE_WINDOWS * step
        floor = plan_dit_tiles(hw, 1)
        assert tiles.tile_tokens <= budget or tiles == floor  # over the budget only at the floor


@pytest.mark.parametrize("hw", GRIDS)
def test_every_output_cell_gets_weights_summing_to_one(hw):
    for budget in _budgets(hw)[2:]:
        tiles = plan_dit_tiles(hw, budget)
        total = torch.zeros(hw, dtype=torch.float64)
        count = torch.zeros(hw, dtype=torch.int64)
        for row in tiles.rows:
            for col in tiles.cols:
                w = tile_weights(row, tiles.window[1])[:, None].double() * tile_weights(col, tiles.window[2]).double()
                ys, xs = slice(PATCH * row.start, PATCH * row.stop), slice(PATCH * col.start, PATCH * col.stop)
                total[ys, xs] += w
                count[ys, xs] += 1
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)
        assert count.min() >= 1
        # each tile's cut half window at a shared edge gets no weight at all
        for spans, window in ((tiles.rows, tiles.window[1]), (tiles.cols, tiles.window[2])):
            for span in spans[1:]:  # the first floor(w/2) tokens of a tile: the shifted window it cuts
                assert torch.all(tile_weights(span, window)[: PATCH * (window // 2)] == 0)
                assert tile_weights(span, window)[PATCH * (window // 2)] > 0
            for span in spans[:-1]:  # the last ceil(w/2): the shifted window cut at its end
                assert torch.all(tile_weights(span, window)[-PATCH * (window - window // 2):] == 0)
                assert tile_weights(span, window)[-PATCH * (window - window // 2) - 1] > 0


def test_bad_grids_and_settings_are_refused():
    with pytest.raises(ValueError, match="even latent grid"):
        plan_dit_tiles((181, 320), 100)
    with pytest.raises(ValueError, match="twice the windows"):
        plan_dit_tiles((180, 320), 100, min_tile_windows=4, overlap_windows=2)


def test_halving_the_budget_always_shrinks_the_tile_until_the_floor():
    hw = (1080, 1920)  # 16K output
    tiles = plan_dit_tiles(hw, None)
    sizes = []
    while True:
        smaller = plan_dit_tiles(hw, tiles.tile_tokens // 2)
        if smaller.tile_tokens >= tiles.tile_tokens:
            break
        tiles = smaller
        sizes.append(tiles.tile_tokens)
    assert len(sizes) >= 4 and tiles == plan_dit_tiles(hw, 1)
    # the floor: 540x960 tokens = 36 x 35.6 windows of 15x27; cores of at least 3 windows + 2 shared:
    # 12 rows of 45 + 30 tokens; 12 columns would leave a last core of 69 < 81 tokens, so 9 of 108 + 54
    assert tiles.describe() == "12x9 tiles of 2592x1200 px" and tiles.tile_hw == (75, 162)


# ---------------------------------------------------------------------------------------------
# The tiny DiT, tiled vs untiled
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dit_io(tmp_path_factory):
    written = write_tiny_models(tmp_path_factory.mktemp("dit_tiles"))
    dit = load_dit(written.dit, compute_dtype=torch.float32)
    txt = torch.load(written.pos_emb)
    return dit, txt


def _vid(h: int, w: int, t: int = 1, seed: int = 0) -> torch.Tensor:
    """[noise | smooth condition with texture | 1], the layout `_denoise` builds, (t*h*w, 33)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(t, h, w, 16, generator=g)
    yy, xx = torch.linspace(0, 6, h)[:, None, None], torch.linspace(0, 9, w)[None, :, None]
    cond = torch.sin(yy + xx * torch.arange(1, 17) / 8) + 0.3 * torch.randn(t, h, w, 16, generator=g)
    return torch.cat([noise, cond, torch.ones(t, h, w, 1)], -1).reshape(-1, 33)


def _call(dit, txt, vid, thw, tile):
    t, h, w = thw
    with torch.no_grad():
        return run_dit(dit, vid, txt, torch.tensor([[t, h, w]]), torch.tensor([[txt.shape[0]]]),
                       torch.tensor([1000.0]), tile).view(t, h, w, -1)


def _seam(diff: torch.Tensor, tiles) -> float:
    """Line structure, as the VAE's `_border_jump`: average tiled - untiled along each shared edge,
    and compare the largest step between neighbouring lines inside the shared part with the
    median step over the frame."""
    worst = 0.0
    for spans, dim in ((tiles.rows, 1), (tiles.cols, 2)):
        profile = diff.mean(dim=3 - dim)  # (t, n, c): averaged along the edge
        steps = (profile[:, 1:] - profile[:, :-1]).abs().mean(dim=(0, 2))
        for span in spans[1:]:
            part = steps[PATCH * span.start - 1: PATCH * (span.start + span.blend_in)]
            worst = max(worst, float(part.max() / steps.median()))
    return worst


# Tiny DiT (width 64, 4 blocks, random weights), 180x320 latent grid = 90x160 tokens (6x6 windows
# of 15x27), budget just under the whole grid: 2x1 tiles of 2560x1200 px. Measured, seeds 0/1/2:
# max |tiled - untiled| 0.070/0.082/0.076, mean 0.0025/0.0024/0.0024, against outputs of std 1.03;
# seam 1.99/1.79/2.16x the median step. With a hard cut in the middle of the shared part: the same
# errors, seam 2.65/2.70/2.58x (both tiles are accurate there, so even a cut barely shows); with a
# ramp over the whole overlap (no zero margin on the cut half windows): max 0.22/0.15/0.20, seam
# 5.4/5.0/4.8x. Tiles run with their own windows instead of the grid's: max 3.1, mean 0.18.
MAX_DIFF, MEAN_DIFF, SEAM = 0.15, 0.005, 2.4  # 2x2 tiles of a 240x240 grid (a corner): max 0.114, mean 0.0033


@pytest.fixture(scope="module")
def reference(dit_io):
    dit, txt = dit_io
    vid = _vid(180, 320)
    return vid, _call(dit, txt, vid, (1, 180, 320), None)


def test_tiled_output_is_close_to_untiled_without_seams(dit_io, reference, monkeypatch):
    dit, txt = dit_io
    vid, untiled = reference
    budget = 90 * 160 - 1
    tiles = plan_dit_tiles((180, 320), budget)
    assert tiles.count == 2
    diff = _call(dit, txt, vid, (1, 180, 320), budget) - untiled
    seam = _seam(diff, tiles)
    print(f"DiT {tiles.describe()}: max {diff.abs().max():.4f} mean {diff.abs().mean():.4f} "
          f"(output std {untiled.std():.3f}); seam {seam:.2f}x median step")
    assert diff.abs().max() < MAX_DIFF and diff.abs().mean() < MEAN_DIFF and seam < SEAM

    with monkeypatch.context() as patch:  # a hard cut instead of the ramp is flagged
        patch.setattr(vae_tiling, "_ramp", lambda n: (torch.arange(n, dtype=torch.float64) >= n / 2).double())
        assert _seam(_call(dit, txt, vid, (1, 180, 320), budget) - untiled, tiles) > SEAM
    # so is a ramp over the whole overlap, which gives the tiles' cut windows weight
    monkeypatch.setattr(tiling, "tile_weights", lambda span, window: vae_tiling.blend_weights(span, PATCH))
    loose = _call(dit, txt, vid, (1, 180, 320), budget) - untiled
    assert _seam(loose, tiles) > SEAM and loose.abs().max() > MAX_DIFF


def test_two_by_two_tiles_with_a_shared_corner_stay_within_the_bounds(dit_io):
    """Tiles on both axes (the corner where four meet): the floor tiles of a square grid."""
    dit, txt = dit_io
    thw = (1, 240, 240)  # 120x120 tokens, 6x6 windows of 20x20
    vid = _vid(240, 240, seed=3)
    untiled = _call(dit, txt, vid, thw, None)
    tiles = plan_dit_tiles(thw[1:], 1)
    assert len(tiles.rows) == 2 and len(tiles.cols) == 2
    diff = _call(dit, txt, vid, thw, tiles.tile_tokens) - untiled
    print(f"DiT {tiles.describe()}: max {diff.abs().max():.4f} mean {diff.abs().mean():.4f}")
    assert diff.abs().max() < MAX_DIFF and diff.abs().mean() < MEAN_DIFF


def test_one_tile_is_the_untiled_call_and_tiles_are_deterministic(dit_io, reference, monkeypatch):
    dit, txt = dit_io
    vid, untiled = reference
    calls = []
    hook = dit.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[2][0].tolist())))
    try:
        assert torch.equal(_call(dit, txt, vid, (1, 180, 320), 90 * 160), untiled)
        assert calls == [(1, 180, 320)]
        calls.clear()
        first = _call(dit, txt, vid, (1, 180, 320), 5000)
        tiles = plan_dit_tiles((180, 320), 5000)
        assert len(calls) == tiles.count >= 2
        assert all((h // PATCH) * (w // PATCH) <= tiles.tile_tokens for _, h, w in calls)
        assert torch.equal(_call(dit, txt, vid, (1, 180, 320), 5000), first)
    finally:
        hook.remove()


# ---------------------------------------------------------------------------------------------
# End to end: the memory plan picks DiT tiles for a small budget
# ---------------------------------------------------------------------------------------------

def standin_vae():
    """The VAE of test_vae_tiling with spatially pointwise stand-in networks: exact under any
    tiling and fast at megapixel sizes, so the DiT is the only thing tiles can change."""
    from test_vae_tiling import LocalDecoder, LocalEncoder, _vae_with

    return _vae_with(LocalEncoder(), LocalDecoder())


def smooth_frame(height: int, width: int) -> torch.Tensor:
    y = torch.arange(height, dtype=torch.float32)[:, None, None]
    x = torch.arange(width, dtype=torch.float32)[None, :, None]
    return (0.5 + 0.35 * torch.sin(0.3 * x + 0.2 * y + torch.arange(3) * 2.0))[None].contiguous()  # (1, H, W, 3)


# An image upscaled to 2560x1440: a 180x320 latent grid, the smallest 16:9 frame the default floor
# (5 windows per tile, 2 shared) splits. Two upscales of 3.7 Mpx on the CPU: ~5 s, the price of
# running the real pipeline at a size where tiles exist.
E2E_SETTINGS = dict(resolution=1440, batch_size=1, color_correction="none")


def test_upscale_plans_dit_tiles_for_a_small_budget_and_stays_close_to_untiled(dit_io, monkeypatch, caplog):
    from blockswap import BlockSwapConfig, apply_block_swap
    from seedvr2 import planner
    from seedvr2.pipeline import UpscaleModels, UpscaleSettings, VAETiling, upscale
    from seedvr2.pipeline.fit import MemoryFit

    dit, txt = dit_io
    vae = standin_vae()
    # The stand-in VAE needs next to no memory, and a CPU has no workspaces: plan the DiT alone.
    monkeypatch.setattr(planner, "_vae_peak", lambda *args, **kwargs: 0)
    monkeypatch.setattr(planner, "WORKSPACE_BYTES", 0)
    # At width 64 the tiny DiT's activations (~6 KB per token) are not far above the whole frame's
    # pipeline tensors (~2 KB), so tiles hardly lower its peak; without the latter it is planned
    # like a full-size DiT, whose activations are 66-78 KB per token.
    monkeypatch.setattr(planner, "DIT_IO_BYTES_PER_TOKEN", 0)
    monkeypatch.setattr(planner, "DIT_TILE_ACCUMULATOR_BYTES_PER_TOKEN", 0)
    frames, settings = smooth_frame(90, 160), UpscaleSettings(**E2E_SETTINGS)
    terms = planner._ModelTerms.read(dit, vae, 2, "spread")
    shape = planner._shape(tuple(frames.shape), settings)
    options = planner._dit_tile_options(terms, shape)
    untiled_peak = planner._dit_peak(terms, shape, terms.num_blocks, 1)
    budget = (planner._dit_peak(terms, shape, terms.num_blocks, 1, options[0]) + untiled_peak) // 2
    assert budget < untiled_peak

    handle = apply_block_swap(dit, BlockSwapConfig(blocks_to_swap="auto"), "cpu", allow_cpu_device=True)
    calls = []
    hook = dit.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[2][0].tolist())))
    try:
        def models(vram):
            return UpscaleModels(dit, vae, txt, "cpu", dit_placement=handle, vae_tiling=VAETiling(tile_size="auto"),
                                 memory=MemoryFit(vram_budget=vram, reserve_bytes=0, plan_on_cpu=True))

        with caplog.at_level(logging.INFO, logger="seedvr2"):
            tiled = upscale(frames, models(budget), settings)
        assert f"4/4 blocks swapped, K=1, DiT in {options[0].describe()}, VAE tiles whole frames" in caplog.text
        assert "DOES NOT FIT" not in caplog.text
        assert len(calls) == options[0].count >= 2 and all(t == 1 for t, _, _ in calls)
        calls.clear()
        untiled = upscale(frames, models(64 << 30), settings)
        assert calls == [(1, 180, 320)]
    finally:
        hook.remove()
        handle.remove()
    diff = (tiled - untiled).abs()
    print(f"upscale 2560x1440, DiT {options[0].describe()} vs untiled: max {diff.max():.4f} mean {diff.mean():.5f} "
          f"(0..1 output)")
    assert tiled.shape == untiled.shape == (1, 1440, 2560, 3)
    assert diff.max() < 0.1 and diff.mean() < 0.003
