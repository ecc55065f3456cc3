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
CASES = [((81, 540, 960, 3), 720, 5), ((81, 540, 960, 3), 1080, 21), ((1, 1000, 1500, 3), 2160, 1)]


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
        else:  # one that does not keeps the smallest settings and names a minimum that does fit
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
    """Built from the same swapped_indices and the same 256-byte alignment: exactly equal bytes."""
    from seedvr2.dit import PRESETS
    from dataclasses import replace

    config = replace(PRESETS["3b"], dim=64, heads=2, head_dim=32, num_layers=6, mm_layers=2, mlp_hidden=192, emb_dim=0,
                     rope_dim=30,
                     window_shifted=PRESETS["3b"].window_shifted[:6])
    torch.manual_seed(0)
    dit = seedvr2.build_dit(config).to(torch.float16)
    with torch.device("meta"):
        meta_dit = seedvr2.build_dit(config).to(torch.float16)
    vae = META_VAE
    handle = apply_block_swap(dit, BlockSwapConfig(blocks_to_swap="auto"), "cpu", allow_cpu_device=True)
    for vram in (int(0.42 * GiB), int(0.6 * GiB), 2 * GiB):
        plan = plan_memory(meta_dit, vae, (1, 64, 64, 3), UpscaleSettings(resolution=64, batch_size=1), vram,
                           reserve_bytes=0)
        handle.reconfigure(plan.blocks_to_swap, prefetch_blocks=plan.prefetch_blocks)
        handle.load()
        assert handle.stats().device_weight_bytes == plan.details["dit_weights"], plan.summary()
        handle.offload()
    handle.remove()
