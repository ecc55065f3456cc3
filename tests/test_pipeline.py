"""The upscale pipeline on tiny random-weight checkpoints written to a temp models/SEEDVR2.

Random weights give meaningless pictures, so these tests check what does not depend on the
weights: sizes, frame counts, layouts, determinism, the blending arithmetic, the phase/placement
contract, hooks and every bad-input message. The numbers of the official pipeline are checked in
test_pipeline_golden.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seedvr2.batching import crossfade_weights
from seedvr2.color import band_rows as color_rows, color_correct_bands
from seedvr2.dit import load_dit
from seedvr2.models import resolve_models
from seedvr2.pipeline import (SeededNoise, TensorSink, UpscaleInputError, UpscaleModels, UpscaleSettings, VAETiling,
                              upscale, validate_upscale_inputs)
from seedvr2.pipeline.noise import batch_seed
from seedvr2.text_embeds import load_pos_emb
from seedvr2.vae import load_vae
from tiny_models import write_tiny_models

# Whole frames, whole batches: exact and the fastest on tiny inputs.
EXACT_VAE = VAETiling(tile_size=None, tile_overlap=0, chunk_frames=None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("comfy") / "models" / "SEEDVR2"
    written = write_tiny_models(models_dir)
    paths = resolve_models(written.dit.name, written.vae.name, models_dir, download=False)
    dit = load_dit(paths.dit.path, compute_dtype=torch.float32)
    vae = load_vae(paths.vae.path, dtype=torch.float32)
    return UpscaleModels(dit, vae, load_pos_emb(paths.pos_emb), "cpu", vae_tiling=EXACT_VAE)


def smooth_video(frames: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """A slowly moving colour wave in 0..1, [T, H, W, C]."""
    t = torch.arange(frames, dtype=torch.float32)[:, None, None, None]
    y = torch.arange(height, dtype=torch.float32)[None, :, None, None]
    x = torch.arange(width, dtype=torch.float32)[None, None, :, None]
    phase = torch.arange(channels, dtype=torch.float32) * 2.0
    return (0.5 + 0.35 * torch.sin(0.3 * x + 0.2 * y + 0.15 * t + phase)).contiguous()


def run(models, frames, **settings):
    options = dict(resolution=16, batch_size=5)
    options.update(settings)
    return upscale(frames, models, UpscaleSettings(**options))


# ------------------------------------------------------------------------------------------
# Sizes, frame counts, layouts
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw,settings,expected", [
    ((9, 13), dict(resolution=16), (16, 23)),                          # 13*16/9 = 23.1 -> 23
    ((13, 9), dict(resolution=16), (23, 16)),                          # portrait
    ((12, 13), dict(resolution=17, max_resolution=18), (17, 18)),      # the cap binds: 12*18/13 = 16.6 -> 17
    ((5, 5), dict(resolution=17), (17, 17)),
])
def test_odd_sizes_come_out_exactly_at_the_requested_size(tiny, hw, settings, expected):
    out = run(tiny, smooth_video(1, *hw), **settings)
    assert out.shape == (1, *expected, 3) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("frames,batch_size,overlap", [(1, 5, 0), (5, 5, 0), (17, 5, 0), (7, 5, 0), (17, 5, 2),
                                                       (3, 1, 0), (11, 9, 3)])
def test_every_input_frame_comes_out(tiny, frames, batch_size, overlap):
    out = run(tiny, smooth_video(frames, 4, 4), batch_size=batch_size, temporal_overlap=overlap)
    assert out.shape == (frames, 16, 16, 3)


def test_official_area_mode_crops_to_multiples_of_16(tiny):
    out = run(tiny, smooth_video(2, 24, 40), official_area=(16, 40))
    # area 640 px: scale 0.816 -> round(19.6)=20 x round(32.7)=33, centre-cropped to 16x32
    assert out.shape == (2, 16, 32, 3)


def test_rgba_returns_rgba_with_the_alpha_resized_not_modelled(tiny):
    rgb = smooth_video(3, 9, 11)
    alpha = torch.linspace(0, 1, 9 * 11).reshape(1, 9, 11, 1).expand(3, 9, 11, 1)
    out = run(tiny, torch.cat([rgb, alpha], dim=-1), resolution=16)
    assert out.shape == (3, 16, 20, 4)
    expected_alpha = F.interpolate(alpha.permute(0, 3, 1, 2), size=(16, 20), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(out[..., 3:], expected_alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[..., :3], run(tiny, rgb, resolution=16), atol=0, rtol=0)


def test_uint8_frames_and_uint8_output(tiny):
    frames = (smooth_video(5, 4, 4) * 255).round().to(torch.uint8)
    as_float = upscale(frames.float() / 255, tiny, UpscaleSettings(resolution=16))
    as_u8 = upscale(frames, tiny, UpscaleSettings(resolution=16), output_dtype=torch.uint8)
    assert as_u8.dtype == torch.uint8
    # same input values either way; uint8 output is round(x*255) of the float output
    assert torch.equal(as_u8, torch.round(as_float * 255).to(torch.uint8))


def test_caller_frames_are_not_modified(tiny):
    frames = smooth_video(1, 4, 4) * 1.2 - 0.1  # small overshoots get clamped, but only in our copies
    before = frames.clone()
    run(tiny, frames)
    assert torch.equal(frames, before)


@pytest.mark.parametrize("method", ["wavelet", "adain", "lab", "none"])
def test_every_colour_correction_runs(tiny, method):
    out = run(tiny, smooth_video(1, 4, 4), color_correction=method)
    assert out.shape == (1, 16, 16, 3) and torch.isfinite(out).all()



@pytest.mark.parametrize("method", ["wavelet", "adain", "lab", "none"])
def test_frames_post_processed_in_row_bands_equal_whole_frames(tiny, monkeypatch, method):
    """A tiny POST_TILE_PIXELS sends every frame of the run (24x35 output, a padded canvas,
    overlapping batches so some frames stay float32 for the crossfade) through the banded colour
    fix and conversion (1-row bands for the wavelet, under its 31-row halo; 5 rows for the
    others): the output equals the whole-frame run, bit for bit for wavelet (also as uint8) and
    none, to float32 rounding of the statistics for adain and lab. (Multi-row bands of every
    size: tests/test_color.py.)"""
    budget = 200
    import seedvr2.pipeline.run as run_module

    frames = smooth_video(7, 9, 13)
    settings = UpscaleSettings(resolution=24, batch_size=5, temporal_overlap=2, color_correction=method)
    dtypes = (torch.float32, torch.uint8) if method == "wavelet" else (torch.float32,)
    whole = {dt: upscale(frames, tiny, settings, output_dtype=dt) for dt in dtypes}
    monkeypatch.setattr(run_module, "POST_TILE_PIXELS", budget)
    calls = []
    monkeypatch.setattr(run_module, "color_correct_bands", lambda *a: calls.append(a) or color_correct_bands(*a))
    monkeypatch.setattr(run_module, "color_correct", None)  # the whole-frame path must not run
    for dt in dtypes:
        banded = upscale(frames, tiny, settings, output_dtype=dt)
        assert banded.shape == (7, 24, 35, 3) and banded.dtype == dt
        if method in ("wavelet", "none"):
            assert torch.equal(banded, whole[dt])
        else:
            torch.testing.assert_close(banded, whole[dt], atol=1e-5 if method == "lab" else 1e-6, rtol=0)
    assert len(calls) == 9 * len(dtypes)  # every frame of both batches (5 + 4 with the overlap) in bands
    assert {c[4] for c in calls} == {color_rows(35, budget, method)}

def test_tiled_vae_gives_the_same_layout(tiny):
    models = UpscaleModels(tiny.dit, tiny.vae, tiny.pos_emb, "cpu", vae_tiling=VAETiling(32, 8, 4))
    out = run(models, smooth_video(5, 8, 12), resolution=32)  # canvas 32x48: two tiles
    assert out.shape == (5, 32, 48, 3) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# Determinism and blending
# ------------------------------------------------------------------------------------------

def test_same_seed_same_output_other_seed_other_output(tiny):
    frames = smooth_video(5, 4, 4)
    a, b = run(tiny, frames, seed=7), run(tiny, frames, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(tiny, frames, seed=8))


def test_noise_depends_only_on_seed_batch_and_stream():
    noise = SeededNoise(123)
    assert torch.equal(noise.latent_noise(2, (3, 4)), SeededNoise(123).latent_noise(2, (3, 4)))
    assert not torch.equal(noise.latent_noise(2, (3, 4)), noise.latent_noise(3, (3, 4)))
    assert not torch.equal(noise.latent_noise(2, (3, 4)), noise.posterior_noise(2, (3, 4)))
    seeds = {batch_seed(s, b, k) for s in range(4) for b in range(4) for k in (1, 2)}
    assert len(seeds) == 32 and max(seeds) < 2**63


class _OffsetNoise:
    """SeededNoise with batch indices shifted: batch i of a segment run = batch i+offset of the full run."""

    def __init__(self, seed, offset):
        self.inner, self.offset = SeededNoise(seed), offset

    def latent_noise(self, i, shape):
        return self.inner.latent_noise(i + self.offset, shape)

    def posterior_noise(self, i, shape):
        return self.inner.posterior_noise(i + self.offset, shape)


def test_overlapping_batches_are_crossfaded_with_ramped_weights(tiny):
    """The full run equals the batches run on their own, crossfaded with (j+1)/(n+1) weights."""
    frames, overlap = smooth_video(8, 4, 4), 2
    settings = dict(resolution=16, batch_size=5, temporal_overlap=overlap, seed=3)
    full = upscale(frames, tiny, UpscaleSettings(**settings))
    first = upscale(frames[:5], tiny, UpscaleSettings(**settings), noise=_OffsetNoise(3, 0))   # batch [0, 5)
    second = upscale(frames[3:], tiny, UpscaleSettings(**settings), noise=_OffsetNoise(3, 1))  # batch [3, 8)
    w = crossfade_weights(overlap)[:, None, None, None]
    torch.testing.assert_close(full[:3], first[:3], atol=1e-6, rtol=0)
    torch.testing.assert_close(full[3:5], first[3:] * (1 - w) + second[:2] * w, atol=1e-6, rtol=0)
    torch.testing.assert_close(full[5:], second[2:], atol=1e-6, rtol=0)
    assert not torch.allclose(first[3:], second[:2], atol=1e-3)  # the batches disagree, so the blend matters


class _LowPassVAE(nn.Module):
    """A VAE-shaped stand-in that keeps the picture: 8x8 mean pooling / nearest upsampling.

    Temporal: latent frame k holds pixel frame 4k; decoding interpolates linearly between
    latent frames. Used where the test needs output that follows the input (no random model).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def encode(self, x, on_tile=None, **_):
        frames = x[:, :, ::4]
        mean = F.avg_pool3d(frames, (1, 8, 8)).repeat(1, 6, 1, 1, 1)[:, :16]
        return type("Posterior", (), {"mean": mean, "logvar": torch.full_like(mean, -30.0)})

    def decode(self, z, on_tile=None, **_):
        rgb = z[:, :3]
        t = z.shape[2]
        if t > 1:
            rgb = F.interpolate(rgb, size=(4 * (t - 1) + 1, *rgb.shape[-2:]), mode="trilinear", align_corners=True)
        return F.interpolate(rgb, scale_factor=(1, 8, 8), mode="nearest")


class _InconsistentDiT(nn.Module):
    """x0 = condition + a brightness offset that changes from batch to batch (from the batch's noise).

    This is the failure overlap blending exists for: batches that disagree at their boundary.
    """

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Identity()])

    def forward(self, vid, txt, vid_shape, txt_shape, timestep):
        noise, cond = vid[:, :16], vid[:, 16:32]
        offset = 0.4 * torch.sign(noise[0, 0])  # +-0.4 in latent units, one value per batch
        self.blocks[0](noise)
        return noise - cond - offset / 0.9152


def test_overlap_removes_the_jump_at_batch_boundaries():
    """Content check: on a smooth video, frame-to-frame change at batch boundaries vs. inside batches."""
    models = UpscaleModels(_InconsistentDiT(), _LowPassVAE(), torch.zeros(1, 4), "cpu", vae_tiling=EXACT_VAE)
    frames = smooth_video(29, 16, 16) * 0.5 + 0.25  # headroom so the offsets are not clipped away

    def steps(overlap, seed=0):
        settings = UpscaleSettings(resolution=16, batch_size=9, temporal_overlap=overlap, color_correction="none",
                                   seed=seed)
        out = upscale(frames, models, settings)
        return (out[1:] - out[:-1]).abs().mean(dim=(1, 2, 3))  # step t: frame t -> t+1

    seed = next(s for s in range(50) if len({torch.sign(SeededNoise(s).latent_noise(b, (1, 1, 1, 16))[0, 0, 0, 0]).item()
                                             for b in range(4)}) == 2)  # batches that disagree
    hard = steps(0, seed)
    boundaries = [8, 17, 26]  # batches [0,9) [9,18) [18,27) [27,29): steps 8->9, 17->18, 26->27
    inside = torch.cat([hard[:8], hard[9:17]]).median()
    assert hard[boundaries].max() > 10 * inside  # without overlap: a visible jump (the stand-in works)
    soft = steps(4, seed)
    # with 4 shared frames the same disagreement is spread over 5 steps: no step jumps
    assert soft.max() < 0.3 * hard.max()
    assert soft.max() < hard[boundaries].max() / 5 + 2 * inside


# ------------------------------------------------------------------------------------------
# Phases, placement, progress, interrupt
# ------------------------------------------------------------------------------------------

class _RecordingPlacement:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def load(self):
        self.log.append(f"load {self.name}")

    def offload(self):
        self.log.append(f"offload {self.name}")


def test_phases_run_one_model_at_a_time_with_progress(tiny, monkeypatch):
    """Each phase reports 0/N before its first batch's work (a progress bar or bench/e2e.py's timer
    measures the phase from there), then k/N after each batch."""
    log = []
    for name in ("encode", "decode"):
        monkeypatch.setattr(tiny.vae, name, _logged(getattr(tiny.vae, name), f"vae.{name}", log))
    hook = tiny.dit.register_forward_pre_hook(lambda module, args: log.append("dit()"))
    models = UpscaleModels(tiny.dit, tiny.vae, tiny.pos_emb, "cpu", _RecordingPlacement("dit", log),
                           _RecordingPlacement("vae", log), EXACT_VAE)
    try:
        out = upscale(smooth_video(9, 4, 4), models, UpscaleSettings(resolution=16, batch_size=5),
                      progress=lambda phase, done, total: log.append(f"{phase} {done}/{total}"))
    finally:
        hook.remove()
    assert out.shape[0] == 9
    assert log == ["load vae", "encode 0/2", "vae.encode", "encode 1/2", "vae.encode", "encode 2/2", "offload vae",
                   "load dit", "dit 0/2", "dit()", "dit 1/2", "dit()", "dit 2/2", "offload dit",
                   "load vae", "decode 0/2", "vae.decode", "decode 1/2", "vae.decode", "decode 2/2", "offload vae"]


def _logged(fn, name, log):
    def call(*args, **kwargs):
        log.append(name)
        return fn(*args, **kwargs)
    return call


class _Interrupted(BaseException):
    """Like ComfyUI's InterruptProcessingException: a BaseException, which must not be swallowed."""


def test_interrupt_inside_the_dit_propagates_offloads_and_removes_hooks(tiny):
    log, calls = [], []

    def check():
        calls.append(1)
        if len(calls) == 8:  # past the 3 encode-phase checks, inside the DiT blocks
            raise _Interrupted()

    models = UpscaleModels(tiny.dit, tiny.vae, tiny.pos_emb, "cpu", _RecordingPlacement("dit", log),
                           _RecordingPlacement("vae", log), EXACT_VAE)
    with pytest.raises(_Interrupted):
        upscale(smooth_video(9, 4, 4), models, UpscaleSettings(resolution=16, batch_size=5), check_interrupt=check)
    assert log[-2:] == ["load dit", "offload dit"]
    assert all(not blk._forward_pre_hooks for blk in tiny.dit.blocks)


def test_interrupt_is_checked_between_vae_tiles(tiny):
    seen = []
    models = UpscaleModels(tiny.dit, tiny.vae, tiny.pos_emb, "cpu", vae_tiling=VAETiling(32, 8, 4))

    def check():
        seen.append(1)
        if len(seen) == 3:  # one check before the batch, then one per tile
            raise _Interrupted()

    with pytest.raises(_Interrupted):
        upscale(smooth_video(1, 8, 12), models, UpscaleSettings(resolution=32), check_interrupt=check)


def test_streaming_sink_receives_every_frame_once_in_order(tiny):
    frames = smooth_video(8, 4, 4)
    settings = UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=2)
    pieces = []

    class Sink:
        dtype = torch.float32

        def write(self, start, chunk):
            pieces.append((start, chunk.clone()))

    assert upscale(frames, tiny, settings, sink=Sink()) is None
    starts = [s for s, _ in pieces]
    assert starts == sorted(starts)
    streamed = torch.cat([c for _, c in pieces])
    assert torch.equal(streamed, upscale(frames, tiny, settings))


def test_tensor_sink_reports_missing_frames():
    sink = TensorSink(3, 2, 2, 3)
    sink.write(0, torch.zeros(2, 2, 2, 3))
    with pytest.raises(RuntimeError, match=r"frames \[2\]"):
        sink.result()


# ------------------------------------------------------------------------------------------
# Bad inputs: one message each, naming the input
# ------------------------------------------------------------------------------------------

BAD_SETTINGS = [
    (dict(batch_size=6), r"batch_size must be 4n\+1.*got 6; use 5 or 9"),
    (dict(batch_size=0), r"batch_size must be 4n\+1"),
    (dict(resolution=8), r"resolution must be at least 16.*got 8"),
    (dict(max_resolution=8), r"max_resolution must be 0 \(no cap\) or at least 16"),
    (dict(temporal_overlap=5), r"temporal_overlap must be between 0 and batch_size-1 \(4\), got 5"),
    (dict(temporal_overlap=-1), r"temporal_overlap must be between"),
    (dict(color_correction="sepia"), r"color_correction must be one of wavelet, adain, lab, none"),
    (dict(seed=-1), r"seed must be between 0 and"),
    (dict(resolution=16.5), r"resolution must be an integer"),
    (dict(official_area=(8, 8)), r"official_area must be \(height, width\) integers >= 16"),
]


@pytest.mark.parametrize("settings,message", BAD_SETTINGS)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(UpscaleInputError, match=message):
        UpscaleSettings(**settings)


BAD_FRAMES = [
    (torch.zeros(0, 8, 8, 3), r"frames is empty \(0 frames\)"),
    (torch.zeros(8, 8, 3), r"4 dimensions.*frames\[None\]"),
    (torch.zeros(1, 8, 8, 2), r"3 \(RGB\) or 4 \(RGBA\) channels.*got 2"),
    (torch.zeros(1, 3, 8, 8), r"got 8.*looks like \[T, C, H, W\]"),
    (torch.zeros(1, 8, 8, 3, dtype=torch.int32), r"uint8 \(0\.\.255\) or floating point"),
    (torch.full((2, 8, 8, 3), 128.0), r"values must be in 0\.\.1, found 128\.\.128.*x/255"),
    (torch.full((1, 8, 8, 3), -1.0), r"values must be in 0\.\.1.*\(x\+1\)/2"),
    ([[0.5]], r"frames must be a torch.Tensor"),
]


@pytest.mark.parametrize("frames,message", BAD_FRAMES)
def test_bad_frames_are_named(frames, message):
    with pytest.raises(UpscaleInputError, match=message):
        validate_upscale_inputs(frames, UpscaleSettings())


def test_nan_frames_name_the_first_bad_frame():
    frames = torch.rand(40, 4, 4, 3)
    frames[33, 1, 2, 0] = float("nan")
    with pytest.raises(UpscaleInputError, match="NaN or infinite values \\(first at frame 33\\)"):
        validate_upscale_inputs(frames, UpscaleSettings())


def test_cap_that_leaves_less_than_16_pixels_is_named():
    with pytest.raises(UpscaleInputError, match="max_resolution=64"):
        validate_upscale_inputs(torch.rand(1, 10, 320, 3), UpscaleSettings(resolution=16, max_resolution=64))


def test_wrong_text_embedding_is_named(tiny):
    models = UpscaleModels(tiny.dit, tiny.vae, torch.zeros(58, 5120), "cpu", vae_tiling=EXACT_VAE)
    with pytest.raises(UpscaleInputError, match=r"pos_emb has shape \(58, 5120\).*width 80"):
        upscale(torch.rand(1, 4, 4, 3), models, UpscaleSettings(resolution=16))
