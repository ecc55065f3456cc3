"""`seedvr2.plan_memory`: invariants over a grid of budgets and sizes, on meta-device models of the
released shapes, and the planner's DiT arena against what block swap really allocates."""
from __future__ import annotations

import itertools

import pytest
import torch

import seedvr2
from blockswap import BlockSwapConfig, apply_block_swap
from seedvr2 import UpscaleSettings, plan_memory
from seedvr2.planner import MIN_AUTO_TILE, PHASES, default_reserve_bytes

GiB = 1 << 30


with torch.device("meta"):  # built once: the VAE's constructor takes seconds even on meta
    META_VAE = seedvr2.build_vae("default").to(torch.bfloat16)


def meta_models(family: str, dtype: torch.dtype):
    with torch.device("meta"):
        dit = seedvr2.build_dit(family)
    return dit.to(dtype), META_VAE


MODELS = {name: meta_models(*spec) for name, spec in {
    "3b fp16": ("3b", torch.float16), "7b fp16": ("7b", torch.float16), "7b fp8": ("7b", torch.float8_e4m3fn)}.items()}
# ~0.1 s per plan (it walks the full-size meta models): a coarse grid keeps this file near 20 s.
BUDGETS = [int(g * GiB) for g in (1, 2, 3, 4, 6, 8, 12, 16, 24, 48)]
CASES = [((81, 540, 960, 3), 720, 5), ((81, 540, 960, 3), 1080, 21), ((1, 1000, 1500, 3), 2160, 1),
         ((1, 1080, 1920, 3), 4320, 1)]  # an 8K image: DiT tiles on the smaller budgets


def _tile_rank(tile):
    return float("inf") if tile is None else tile


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape,resolution,batch", CASES)
def test_less_vram_never_swaps_fewer_blocks_or_uses_larger_tiles(name, shape, resolution, batch):
    dit, vae = MODELS[name]
    settings = UpscaleSettings(resolution=resolution, batch_size=batch)
    plans = [plan_memory(dit, vae, shape, settings, v) for v in BUDGETS]
    for smaller, larger in itertools.pairwise(plans):  # budgets ascend
        assert smaller.blocks_to_swap >= larger.blocks_to_swap, (smaller.summary(), larger.summary())
        assert _tile_rank(smaller.vae_tile_size) <= _tile_rank(larger.vae_tile_size), (smaller.summary(), larger.summary())
        assert _tile_rank(smaller.dit_tile_tokens) <= _tile_rank(larger.dit_tile_tokens), (smaller.summary(), larger.summary())
        assert smaller.prefetch_blocks <= larger.prefetch_blocks
        assert smaller.max_batch_size <= larger.max_batch_size
        assert not (smaller.fits and not larger.fits)
    assert plans[0].blocks_to_swap == plans[0].blocks_total  # 1 GiB: everything as small as it goes
    assert any(p.fits for p in plans) and not plans[0].fits
    for vram, plan in zip(BUDGETS, plans):  # a plan that fits has every peak within the budget
        assert set(plan.peak_bytes) == set(PHASES) and plan.reserve_bytes == default_reserve_bytes(vram)
        worst = max(plan.peak_bytes.values())
        assert plan.fits == (worst + plan.reserve_bytes <= vram)
        if plan.fits:
            assert worst <= vram and plan.reason == ""
        if plan.dit_tile_tokens is not None:  # tiles only for single frames, after every block is swapped
            assert shape[0] == 1 or batch == 1
            assert plan.blocks_to_swap == plan.blocks_total and plan.prefetch_blocks == 1
        if not plan.fits:  # one that does not keeps the smallest settings and names a minimum that does fit
            assert plan.blocks_to_swap == plan.blocks_total and plan.prefetch_blocks == 1
            assert plan.vae_tile_size == MIN_AUTO_TILE or max(plan.peak_bytes["encode"], plan.peak_bytes["decode"]) \
                + plan.reserve_bytes <= vram
            assert f"at least {plan.min_vram_bytes / GiB:.1f} GiB" in plan.reason
    smallest = next(p for p in plans if not p.fits)
    assert plan_memory(dit, vae, shape, settings, smallest.min_vram_bytes).fits


@pytest.mark.parametrize("name", ["3b fp16", "7b fp16"])
def test_largest_batch_is_the_largest_that_fits(name):
    dit, vae = MODELS[name]
    shape = (121, 540, 960, 3)
    for vram in (6 * GiB, 10 * GiB, 16 * GiB):
        plan = plan_memory(dit, vae, shape, UpscaleSettings(resolution=1080, batch_size=5), vram)
        b = plan.max_batch_size
        assert b >= 1 and (b - 1) % 4 == 0
        assert plan_memory(dit, vae, shape, UpscaleSettings(resolution=1080, batch_size=b), vram).fits
        if b + 4 <= 121:
            assert not plan_memory(dit, vae, shape, UpscaleSettings(resolution=1080, batch_size=b + 4), vram).fits


def test_summary_is_one_readable_line():
    dit, vae = MODELS["7b fp16"]
    plan = plan_memory(dit, vae, (81, 540, 960, 3), UpscaleSettings(resolution=1080, batch_size=21), 12 * GiB)
    line = plan.summary()
    assert "\n" not in line and line.startswith("7B fp16 on 12.0 GiB free: ")
    assert f"{plan.blocks_to_swap}/36 blocks swapped, K={plan.prefetch_blocks}" in line
    assert "peaks encode" in line and "largest batch" in line
    fp8 = plan_memory(*MODELS["7b fp8"], (81, 540, 960, 3), UpscaleSettings(resolution=1080, batch_size=21), 12 * GiB)
    assert fp8.model_name == "7B fp8" and fp8.blocks_to_swap <= plan.blocks_to_swap


def test_quantized_weights_swap_fewer_blocks_than_fp16():
    settings = UpscaleSettings(resolution=1080, batch_size=5)
    fp16 = plan_memory(*MODELS["7b fp16"], (5, 540, 960, 3), settings, 12 * GiB)
    fp8 = plan_memory(*MODELS["7b fp8"], (5, 540, 960, 3), settings, 12 * GiB)
    assert fp8.details["dit_weights"] < fp16.details["dit_weights"]
    assert fp8.blocks_to_swap < fp16.blocks_to_swap


def test_explicit_reserve_is_used():
    dit, vae = MODELS["3b fp16"]
    settings = UpscaleSettings(resolution=720, batch_size=5)
    plan = plan_memory(dit, vae, (5, 540, 960, 3), settings, 8 * GiB, reserve_bytes=3 * GiB)
    assert plan.reserve_bytes == 3 * GiB
    assert max(plan.peak_bytes.values()) <= 5 * GiB or not plan.fits


@pytest.mark.parametrize("kwargs,match", [
    (dict(frames_shape=(5, 64, 64)), "frames_shape"),
    (dict(frames_shape=(0, 64, 64, 3)), "frames_shape"),
    (dict(vram_bytes=-1), "vram_bytes"),
    (dict(vram_bytes=8.5), "vram_bytes"),
    (dict(reserve_bytes=-5), "reserve_bytes"),
    (dict(settings={"batch_size": 5}), "settings"),
    (dict(prefetch_blocks=0), "prefetch_blocks"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    dit, vae = MODELS["3b fp16"]
    args = dict(dit=dit, vae=vae, frames_shape=(5, 64, 64, 3), settings=UpscaleSettings(), vram_bytes=8 * GiB)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plan_memory(**args)


def test_the_dit_arena_predicted_is_what_block_swap_allocates():
    """Built from the same swapped_indices and the same 256-byte alignment: exactly equal bytes,
    for budgets that make the plan swap every count from 0 to all (blocks of two sizes, as the 3B)."""
    from dataclasses import replace

    from seedvr2.dit import PRESETS
    from seedvr2.planner import WORKSPACE_BYTES, _ModelTerms, _plan

    config = replace(PRESETS["3b"], dim=64, heads=2, head_dim=32, num_layers=6, mm_layers=2, mlp_hidden=192, emb_dim=0,
                     rope_dim=30, window_shifted=PRESETS["3b"].window_shifted[:6])
    torch.manual_seed(0)
    dit = seedvr2.build_dit(config).to(torch.float16)
    with torch.device("meta"):
        meta_dit = seedvr2.build_dit(config).to(torch.float16)
    terms = _ModelTerms.read(meta_dit, META_VAE, 2, "spread")
    shape, settings = (1, 16, 16, 3), UpscaleSettings(resolution=16, batch_size=1)
    act = _plan(terms, shape, settings, 64 * GiB, 0, 64).details["dit_activations"]
    handle = apply_block_swap(dit, BlockSwapConfig(blocks_to_swap="auto"), "cpu", allow_cpu_device=True)
    seen = set()
    for target in range(7):
        vram = WORKSPACE_BYTES + act + terms.arena_bytes(target, 2)
        plan = _plan(terms, shape, settings, vram, 0, 64)  # plan_memory's core, without the batch search
        assert plan.peak_bytes["dit"] <= vram
        handle.reconfigure(plan.blocks_to_swap, prefetch_blocks=plan.prefetch_blocks)
        handle.load()
        assert handle.stats().device_weight_bytes == plan.details["dit_weights"], plan.summary()
        handle.offload()
        seen.add(plan.blocks_to_swap)
    handle.remove()
    assert len(seen) >= 4 and max(seen) == 6  # the big blocks 0 and 1 were swapped too


@pytest.mark.parametrize("name", ["3b fp16", "7b fp8"])
def test_dense_budgets_are_monotone_and_each_choice_is_the_best_that_fits(name):
    """A fine grid (32 MiB steps) across the DiT's swap range, on the planner's core (no
    largest-batch search): monotone, and nothing larger would have fit: one block fewer swapped
    (or K back to its setting) or the next larger tile exceeds the budget."""
    from seedvr2.planner import _ModelTerms, _dit_peak, _plan, _shape, _tile_candidates, _vae_peak

    dit, vae = MODELS[name]
    terms = _ModelTerms.read(dit, vae, 2, "spread")
    frames, settings = (81, 540, 960, 3), UpscaleSettings(resolution=1080, batch_size=13)
    shape = _shape(frames, settings)
    reserve = 0
    low = _dit_peak(terms, shape, terms.num_blocks, 1) - GiB
    high = _dit_peak(terms, shape, 0, 2) + GiB
    previous = None
    for vram in range(low, high, 32 << 20):
        plan = _plan(terms, frames, settings, vram, reserve, 64)
        if previous is not None:
            assert plan.blocks_to_swap <= previous.blocks_to_swap, (vram, plan.summary(), previous.summary())
            assert plan.prefetch_blocks >= previous.prefetch_blocks
            assert _tile_rank(plan.vae_tile_size) >= _tile_rank(previous.vae_tile_size)
        if plan.fits:
            if plan.blocks_to_swap > 0 and plan.prefetch_blocks == 2:
                assert _dit_peak(terms, shape, plan.blocks_to_swap - 1, 2) > vram
            if plan.prefetch_blocks == 1:
                assert _dit_peak(terms, shape, terms.num_blocks, 2) > vram
            candidates = _tile_candidates(shape.canvas)
            i = candidates.index(plan.vae_tile_size)
            if i > 0:
                assert max(_vae_peak(terms, shape, p, candidates[i - 1], 64) for p in ("encode", "decode")) > vram
        previous = plan


@pytest.mark.parametrize("name", ["3b fp16", "7b fp8"])
@pytest.mark.parametrize("resolution", [4320, 8640])
def test_dit_tiles_come_only_when_every_block_swapped_does_not_fit_and_the_peak_is_the_tiles(name, resolution):
    """8K and 16K images: untiled while all blocks swapped with K=1 fit; then the largest tiles that
    fit, whose DiT peak is the tile's (not the frame's) and fits; less VRAM never gives larger tiles;
    the plan line states them."""
    from seedvr2.dit.tiling import plan_dit_tiles
    from seedvr2.planner import _dit_peak, _dit_tile_options, _ModelTerms, _plan, _shape

    dit, vae = MODELS[name]
    terms = _ModelTerms.read(dit, vae, 2, "spread")
    frames, settings = (1, 1080, 1920, 3), UpscaleSettings(resolution=resolution, batch_size=1)
    shape = _shape(frames, settings)
    latent = (shape.canvas[0] // 8, shape.canvas[1] // 8)
    untiled_floor = _dit_peak(terms, shape, terms.num_blocks, 1)
    options = _dit_tile_options(terms, shape)
    sizes = [o.tile_tokens for o in options]
    assert len(options) >= 3 and sizes == sorted(set(sizes), reverse=True)
    previous, tiled_fits = None, 0
    for vram in range(_dit_peak(terms, shape, terms.num_blocks, 1, options[-1]) - GiB, untiled_floor + GiB, 384 << 20):
        plan = _plan(terms, frames, settings, vram, 0, 64)
        if plan.dit_tile_tokens is None:
            assert untiled_floor <= vram or plan.details["dit_tiles"] is None and not options
        else:
            assert untiled_floor > vram and plan.blocks_to_swap == terms.num_blocks and plan.prefetch_blocks == 1
            tiles = plan_dit_tiles(latent, plan.dit_tile_tokens, terms.num_windows)  # what run_dit will run
            assert tiles.tile_tokens == plan.dit_tile_tokens and tiles.describe() == plan.details["dit_tiles"]
            assert plan.peak_bytes["dit"] == _dit_peak(terms, shape, terms.num_blocks, 1, tiles) < untiled_floor
            assert f"K=1, DiT in {tiles.describe()}, VAE tiles" in plan.summary()
            if plan.peak_bytes["dit"] <= vram:
                tiled_fits += 1
                bigger = [o for o in options if o.tile_tokens > tiles.tile_tokens]
                assert all(_dit_peak(terms, shape, terms.num_blocks, 1, o) > vram for o in bigger)
            else:
                assert tiles == options[-1]  # nothing fits: the floor tiles
        if previous is not None:
            assert _tile_rank(plan.dit_tile_tokens) >= _tile_rank(previous.dit_tile_tokens)
        previous = plan
    assert tiled_fits >= 3


def test_video_batches_are_never_tiled_by_the_plan():
    dit, vae = MODELS["3b fp16"]
    plan = plan_memory(dit, vae, (21, 1080, 1920, 3), UpscaleSettings(resolution=4320, batch_size=5), 12 * GiB)
    assert plan.dit_tile_tokens is None and not plan.fits and "smaller batch_size" in plan.reason
    image = plan_memory(dit, vae, (21, 1080, 1920, 3), UpscaleSettings(resolution=4320, batch_size=1), 12 * GiB)
    assert image.dit_tile_tokens is not None and image.peak_bytes["dit"] + image.reserve_bytes <= 12 * GiB


def test_a_budget_under_the_models_own_floor_says_so_instead_of_blaming_the_batch():
    """A 16x16 image on 1 GiB: its activations are nothing, the swapped model's device weights
    exceed the budget. The reason says that, never 'use a smaller batch_size', names the minimum,
    and never reports a negative usable memory (budget under the reserve)."""
    dit, vae = MODELS["3b fp16"]
    for vram in (0, GiB):
        plan = plan_memory(dit, vae, (1, 16, 16, 3), UpscaleSettings(resolution=16, batch_size=1), vram)
        assert not plan.fits
        assert "weights on the device and workspace alone" in plan.reason, plan.reason
        assert "smaller batch_size" not in plan.reason and "-" not in plan.reason.split(";")[-1], plan.reason
        assert f"at least {plan.min_vram_bytes / GiB:.1f} GiB of VRAM would fit" in plan.reason
    big = plan_memory(dit, vae, (81, 540, 960, 3), UpscaleSettings(resolution=1080, batch_size=81), 3 * GiB)
    assert "use a smaller batch_size or resolution" in big.reason, big.reason  # activations do dominate there


def test_a_16k_image_is_post_processed_in_bands_so_its_decode_fits_a_small_card():
    """15360x8640 from 1080p: the decode's colour fix and conversion run in row bands
    (`run.POST_TILE_PIXELS`), so its temporaries are the input, the whole reference and one band,
    not ~10 copies of the 132-Mpx frame (15.7 GiB before at 128-px tiles; 3.3 GiB now). The VAE's
    own working set then decides the tile again, and 16K fits an 8 GiB budget."""
    from seedvr2.pipeline.run import POST_TILE_PIXELS
    from seedvr2.planner import POST_TENSORS, WORKSPACE_BYTES, _ModelTerms, _shape, _vae_peak

    dit, vae = MODELS["3b fp16"]
    terms = _ModelTerms.read(dit, vae, 2, "spread")
    frames, settings = (1, 1080, 1920, 3), UpscaleSettings(resolution=8640, batch_size=1)
    shape = _shape(frames, settings)
    assert shape.output_px > 15 * POST_TILE_PIXELS
    decode = _vae_peak(terms, shape, "decode", MIN_AUTO_TILE, 64)
    temps = 12 * (shape.input_px + shape.resized_px + POST_TENSORS["output"] * POST_TILE_PIXELS)
    assert decode == terms.vae_weight_bytes + WORKSPACE_BYTES + temps < 3.5 * GiB
    plan = plan_memory(dit, vae, frames, settings, 8 * GiB)
    assert plan.fits and plan.vae_tile_size > MIN_AUTO_TILE, plan.summary()
    assert plan.min_vram_bytes < 7 * GiB
    # a 4K output (8.3 Mpx, within one band) keeps the whole-frame term: 10 frame-sized tensors
    four_k = _shape((1, 1080, 1920, 3), UpscaleSettings(resolution=2160, batch_size=1))
    assert four_k.output_px <= POST_TILE_PIXELS
    whole = 12 * (four_k.input_px + POST_TENSORS["output"] * four_k.output_px)
    assert _vae_peak(terms, four_k, "decode", MIN_AUTO_TILE, 64) == terms.vae_weight_bytes + WORKSPACE_BYTES + whole
