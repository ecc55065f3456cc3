"""The run-time fit (`seedvr2.pipeline.fit`): "auto" resolved before the run, and the out-of-memory
fallback, tested on the CPU by injecting `torch.OutOfMemoryError`: a retried run must equal a run
planned small from the start."""
from __future__ import annotations

import logging

import pytest
import torch

from blockswap import BlockSwapConfig, apply_block_swap
from seedvr2.pipeline import UpscaleModels, UpscaleSettings, VAETiling, upscale
from seedvr2.pipeline.fit import MemoryFit
from test_pipeline import smooth_video, tiny  # noqa: F401  (fixture)

GiB = 1 << 30


def _models(tiny, tiling, placement=None, memory=None):  # noqa: F811
    return UpscaleModels(tiny.dit, tiny.vae, tiny.pos_emb, "cpu", dit_placement=placement, vae_tiling=tiling,
                         memory=memory)


def _oom_while(obj, name, condition):
    """Make obj.<name> raise OutOfMemoryError while condition() holds; returns the call log."""
    original = getattr(obj, name)
    calls = []

    def wrapped(*args, **kwargs):
        failing = condition(kwargs)
        calls.append((kwargs.get("tile_size"), failing))
        if failing:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(*args, **kwargs)

    return wrapped, calls


def test_vae_oom_halves_the_tile_and_the_output_equals_a_run_tiled_small_from_the_start(tiny, monkeypatch, caplog):  # noqa: F811
    frames = smooth_video(1, 20, 30)  # one frame: CPU convs at this size are seconds per frame
    settings = dict(resolution=136, batch_size=1, color_correction="none")  # canvas 144x208
    whole = VAETiling(tile_size=None, tile_overlap=16, chunk_frames=4)
    wrapped, calls = _oom_while(tiny.vae, "encode", lambda kw: kw["tile_size"] is None or kw["tile_size"] > 200)
    monkeypatch.setattr(tiny.vae, "encode", wrapped)
    with caplog.at_level(logging.WARNING, logger="seedvr2"):
        out = upscale(frames, _models(tiny, whole), UpscaleSettings(**settings))
    monkeypatch.undo()
    # None -> one tile covering the 208-px side (256) -> 128: the first size that does not fail
    assert [t for t, _ in calls] == [None, 256, 128]
    assert caplog.text.count("out of memory in the encode phase") == 2
    small = upscale(frames, _models(tiny, VAETiling(tile_size=128, tile_overlap=16, chunk_frames=4)),
                    UpscaleSettings(**settings))
    assert torch.equal(out, small)


def test_decode_oom_at_whole_frames_moves_to_one_tile_with_the_same_output(tiny, monkeypatch, caplog):  # noqa: F811
    frames = smooth_video(1, 20, 30)
    settings = UpscaleSettings(resolution=64, batch_size=1, color_correction="none")
    whole = VAETiling(tile_size=None, tile_overlap=16, chunk_frames=4)
    reference = upscale(frames, _models(tiny, whole), settings)
    wrapped, calls = _oom_while(tiny.vae, "decode", lambda kw: kw["tile_size"] is None)
    monkeypatch.setattr(tiny.vae, "decode", wrapped)
    with caplog.at_level(logging.WARNING, logger="seedvr2"):
        out = upscale(frames, _models(tiny, whole), settings)
    assert [t for t, _ in calls] == [None, 128]  # one tile covering the 96-px side (the 128-px floor)
    assert "out of memory in the decode phase; retrying the batch with VAE tiles of 128 px" in caplog.text
    assert torch.equal(out, reference)  # one tile is the whole-frame computation


def test_vae_oom_at_the_floor_tile_is_raised(tiny, monkeypatch):  # noqa: F811
    wrapped, calls = _oom_while(tiny.vae, "encode", lambda kw: True)
    monkeypatch.setattr(tiny.vae, "encode", wrapped)
    with pytest.raises(torch.OutOfMemoryError):
        upscale(smooth_video(5, 20, 30), _models(tiny, VAETiling(tile_size=256, tile_overlap=16)),
                UpscaleSettings(resolution=16, batch_size=5))
    assert [t for t, _ in calls] == [256, 128]  # halved once, then the floor failed too


def test_fallback_off_raises_at_once(tiny, monkeypatch):  # noqa: F811
    wrapped, calls = _oom_while(tiny.vae, "encode", lambda kw: True)
    monkeypatch.setattr(tiny.vae, "encode", wrapped)
    with pytest.raises(torch.OutOfMemoryError):
        upscale(smooth_video(5, 20, 30), _models(tiny, VAETiling(tile_size=256), memory=MemoryFit(oom_fallback=False)),
                UpscaleSettings(resolution=16, batch_size=5))
    assert len(calls) == 1


def test_dit_oom_swaps_more_blocks_and_the_output_equals_a_run_swapping_them_from_the_start(tiny, caplog):  # noqa: F811
    frames = smooth_video(5, 20, 30)
    settings = UpscaleSettings(resolution=16, batch_size=5)
    exact = VAETiling(tile_size=None, tile_overlap=0, chunk_frames=None)
    reference = upscale(frames, _models(tiny, exact), settings)
    handle = apply_block_swap(tiny.dit, BlockSwapConfig(blocks_to_swap=0), "cpu", allow_cpu_device=True)
    failures = []

    def fail_until_two_swapped(module, args):
        if handle.stats().blocks_swapped < 2:
            failures.append(handle.stats().blocks_swapped)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    hook = tiny.dit.blocks[1].register_forward_pre_hook(fail_until_two_swapped)
    try:
        with caplog.at_level(logging.WARNING, logger="seedvr2"):
            out = upscale(frames, _models(tiny, exact, placement=handle), settings)
        assert failures == [0, 1]  # 4 blocks: +1 per fallback (a quarter of them)
        assert handle.stats().blocks_swapped == 2
        assert caplog.text.count("out of memory in the dit phase") == 2
        assert torch.equal(out, reference)  # block swap is exact: same output as unswapped
    finally:
        hook.remove()
        handle.remove()


def test_auto_resolves_blocks_and_tiles_from_the_plan_before_the_run(tiny, caplog):  # noqa: F811
    frames = smooth_video(5, 20, 30)
    handle = apply_block_swap(tiny.dit, BlockSwapConfig(blocks_to_swap="auto"), "cpu", allow_cpu_device=True)
    try:
        fit = MemoryFit(vram_budget=int(0.0 * GiB) + (1 << 20), reserve_bytes=0, plan_on_cpu=True)
        tiling = VAETiling(tile_size="auto", tile_overlap=16)
        with caplog.at_level(logging.INFO, logger="seedvr2"):
            out = upscale(frames, _models(tiny, tiling, placement=handle, memory=fit), UpscaleSettings(resolution=16))
        assert "SeedVR2 memory plan: " in caplog.text and "DOES NOT FIT" in caplog.text  # 1 MiB: nothing fits
        assert handle.stats().blocks_swapped == 4 and handle.stats().prefetch_blocks == 1  # the smallest plan
        big = MemoryFit(vram_budget=64 * GiB, reserve_bytes=0, plan_on_cpu=True)
        out_big = upscale(frames, _models(tiny, tiling, placement=handle, memory=big), UpscaleSettings(resolution=16))
        assert handle.stats().blocks_swapped == 0  # plenty: every block resident
        assert out.shape == out_big.shape
    finally:
        handle.remove()


def test_auto_tile_without_a_device_plan_uses_the_default_tile(tiny):  # noqa: F811
    out = upscale(smooth_video(5, 20, 30), _models(tiny, VAETiling(tile_size="auto")), UpscaleSettings(resolution=16))
    assert out.shape[0] == 5


class _FakeHandle:
    """Stands in for a block-swap handle on "cuda" (only what the fit reads and calls)."""

    def __init__(self, cfg):
        self.config, self.active, self.calls = cfg, True, []

    def reconfigure(self, blocks, prefetch_blocks=None):
        self.calls.append((blocks, prefetch_blocks))


@pytest.mark.parametrize("cap_gib,free_gib", [(None, 9.0), (6.0, 20.0), (6.0, 3.0)])
def test_on_cuda_the_host_is_asked_to_make_room_for_the_plan_and_the_budget_is_what_is_free(tiny, monkeypatch,  # noqa: F811
                                                                                              cap_gib, free_gib):
    """The good-citizen flow: make_room(device, needed) with what the best plan under the cap
    needs (never more than the cap), then plan for min(cap, free). No GPU needed: the device
    queries are replaced."""
    from seedvr2.pipeline import fit as fit_module
    from seedvr2.planner import plan_memory

    monkeypatch.setattr(fit_module, "total_device_memory", lambda device: 24 * GiB)
    asked = []

    def make_room(device, needed):
        asked.append(needed)
        return int(free_gib * GiB)

    handle = _FakeHandle(BlockSwapConfig(blocks_to_swap="auto",
                                         vram_budget=cap_gib))
    settings = UpscaleSettings(resolution=16)
    fit = fit_module.RunFit.start(tiny.dit, tiny.vae, VAETiling(tile_size="auto"), handle, (5, 20, 30, 3), (16, 32),
                                  settings, torch.device("cuda"), MemoryFit(make_room=make_room))
    cap = int((cap_gib or 24) * GiB)
    assert len(asked) == 1 and 0 < asked[0] <= cap
    expected = plan_memory(tiny.dit, tiny.vae, (5, 20, 30, 3), settings, min(cap, int(free_gib * GiB)))
    assert fit.plan == expected
    assert handle.calls == [(expected.blocks_to_swap, expected.prefetch_blocks)]
    assert fit.vae_tiling.tile_size == expected.vae_tile_size


# DiT tiles as the last DiT fallback. A 2560x1440 output (the smallest 16:9 frame the default DiT
# tile floor splits) with the pointwise stand-in VAE of test_vae_tiling, so that only the DiT works.
def _big_image_models(tiny, placement=None):  # noqa: F811
    from test_dit_tiles import standin_vae

    return UpscaleModels(tiny.dit, standin_vae(), tiny.pos_emb, "cpu", dit_placement=placement,
                         vae_tiling=VAETiling(tile_size=None, tile_overlap=0, chunk_frames=None))


def _oom_above(dit, max_tokens, calls):
    """A DiT forward pre-hook: out of memory for calls of more than `max_tokens` tokens per frame."""
    def hook(module, args):
        t, h, w = args[2][0].tolist()
        calls.append((h // 2) * (w // 2))
        assert len(calls) < 20, "the fallback does not stop"
        if (h // 2) * (w // 2) > max_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
    return dit.register_forward_pre_hook(hook)


BIG = dict(resolution=1440, batch_size=1, color_correction="none")


def _tile_sizes(tiles):
    return [(r.stop - r.start) * (c.stop - c.start) for r in tiles.rows for c in tiles.cols]


def test_dit_oom_with_every_block_swapped_runs_in_tiles_equal_to_tiles_from_the_start(tiny, monkeypatch,  # noqa: F811
                                                                                     caplog):
    from seedvr2.dit.tiling import plan_dit_tiles
    from seedvr2.pipeline import fit as fit_module
    from test_dit_tiles import smooth_frame

    frames = smooth_frame(90, 160)
    floor = plan_dit_tiles((180, 320), 1)  # the 90x160-token grid splits once: 2x1 tiles
    handle = apply_block_swap(tiny.dit, BlockSwapConfig(blocks_to_swap=4, prefetch_blocks=2), "cpu",
                              allow_cpu_device=True)
    calls = []
    hook = _oom_above(tiny.dit, floor.tile_tokens, calls)
    try:
        with caplog.at_level(logging.WARNING, logger="seedvr2"):
            out = upscale(frames, _big_image_models(tiny, handle), UpscaleSettings(**BIG))
        # K=2 fails, K=1 fails, then whole frames become tiles of at most half the frame: the floor here
        assert calls == [90 * 160, 90 * 160, *_tile_sizes(floor)]
        assert "retrying the batch with all 4 DiT blocks swapped and K=1" in caplog.text
        assert f"out of memory in the dit phase; retrying the batch with the DiT in {floor.describe()}" in caplog.text
    finally:
        hook.remove()
        handle.remove()
    start = fit_module.RunFit.start

    def tiled_from_the_start(*args, **kwargs):
        run = start(*args, **kwargs)
        run.dit_tile = floor.tile_tokens
        return run

    monkeypatch.setattr(fit_module.RunFit, "start", tiled_from_the_start)
    assert torch.equal(out, upscale(frames, _big_image_models(tiny), UpscaleSettings(**BIG)))


def test_dit_oom_at_the_floor_tiles_is_raised(tiny, caplog):  # noqa: F811
    from seedvr2.dit.tiling import plan_dit_tiles
    from test_dit_tiles import smooth_frame

    floor = plan_dit_tiles((180, 320), 1)
    calls = []
    hook = _oom_above(tiny.dit, 0, calls)  # nothing fits
    try:
        with caplog.at_level(logging.WARNING, logger="seedvr2"), pytest.raises(torch.OutOfMemoryError):
            upscale(smooth_frame(90, 160), _big_image_models(tiny), UpscaleSettings(**BIG))
    finally:
        hook.remove()
    assert calls == [90 * 160, _tile_sizes(floor)[0]]  # whole frames, the floor's first tile, then the error
    assert caplog.text.count("out of memory in the dit phase") == 1
