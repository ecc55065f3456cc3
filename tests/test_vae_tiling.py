"""Tiled and chunked VAE execution: geometry, exactness, seams, progress/cancel, bounded work.

Three levels:
* the tile/blend geometry itself (pure functions);
* the tiling machinery driven through `VideoVAE.encode/decode` with spatially *local* stand-in
  networks, where tiling must be exact, and with a stand-in that adds a per-tile global statistic
  (what per-tile GroupNorm does), where the blend must spread the tile-to-tile difference over the
  whole overlap: that is what "no seam" means, and a hard-cut blend fails it;
* the real (tiny, golden-weights) VAE tiled vs untiled, with stated tolerances and a line-structure
  check at the tile border.
"""
from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from seedvr2.vae import VAEConfig, build_vae, load_vae
from seedvr2.vae import tiling
from seedvr2.vae.causal_conv import CausalCache, CausalConv3d
from seedvr2.vae.tiling import blend_weights, split_axis

TINY = VAEConfig(block_out_channels=(16, 16, 32, 32), norm_num_groups=4)


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tile", [3, 4, 7, 8, 13, 64])
def test_split_axis_covers_with_fewest_bounded_tiles(tile):
    for overlap in range(tile // 3 + 1):
        for size in range(1, 5 * tile):
            spans = split_axis(size, tile, overlap)
            assert spans[0].start == 0 and spans[-1].stop == size
            assert all(0 < s.stop - s.start <= tile for s in spans)
            for a, b in zip(spans, spans[1:]):
                assert a.stop - b.start == overlap == a.blend_out == b.blend_in  # neighbours share exactly `overlap`
            for a, c in zip(spans, spans[2:]):
                assert a.stop <= c.start  # only neighbours overlap
            n = len(spans)
            assert n == 1 or (n - 1) * tile - (n - 2) * overlap < size  # one tile fewer could not cover


@pytest.mark.parametrize("overlap", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("scale", [1, 8])
def test_blend_weights_sum_to_one_for_odd_and_even_overlaps(overlap, scale):
    size, tile = 7 * overlap + 5, 3 * overlap + 2
    spans = split_axis(size, tile, overlap)
    assert len(spans) >= 3
    total = torch.zeros(size * scale, dtype=torch.float64)
    for span in spans:
        total[span.start * scale: span.stop * scale] += blend_weights(span, scale, torch.float64)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-12, rtol=0)
    inner = blend_weights(spans[1], scale)
    ramp = inner[: overlap * scale]
    assert ramp.min() > 0 and ramp.max() < 1 and torch.all(ramp[1:] > ramp[:-1])  # strictly rising ramp
    torch.testing.assert_close(ramp, 1 - ramp.flip(0), atol=1e-6, rtol=0)  # symmetric: the tiles meet at 0.5
    assert torch.all(blend_weights(spans[0], scale)[: (spans[0].stop - spans[0].start - overlap) * scale] == 1)


# ---------------------------------------------------------------------------------------------
# Machinery, through the public encode/decode, with stand-in networks
# ---------------------------------------------------------------------------------------------

class LocalDecoder(nn.Module):
    """Spatially pointwise, causal in time, with the VAE's geometry: (b, 16, t', h, w) ->
    (b, 3, 4(t'-1)+1, 8h, 8w). ``drift`` adds a multiple of each frame's spatial mean, a global
    statistic like a per-tile GroupNorm's, so tiles then disagree by a per-tile constant."""

    def __init__(self, drift: float = 0.0) -> None:
        super().__init__()
        self.conv_in = CausalConv3d(16, 3 * 4 * 64, (3, 1, 1))
        self.drift = drift
        self.calls: list[tuple[int, ...]] = []

    def forward(self, z: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        self.calls.append(tuple(z.shape))
        first_chunk = cache is None or not cache.has(self.conv_in)
        y = rearrange(self.conv_in(z, cache), "b (c f x y) t h w -> b c (t f) (h x) (w y)", f=4, x=8, y=8)
        y = y[:, :, 3:] if first_chunk else y  # latent 0 decodes to one frame
        return y + self.drift * y.mean(dim=(3, 4), keepdim=True)


class LocalEncoder(nn.Module):
    """Spatially pointwise (per 8x8 cell), causal in time, 4x time-strided: (b, 3, 4n+1, H, W) ->
    (b, 32, n+1, H/8, W/8), with the same optional global ``drift``."""

    def __init__(self, drift: float = 0.0) -> None:
        super().__init__()
        self.conv_in = CausalConv3d(3 * 64, 32, (5, 1, 1), stride=(4, 1, 1))
        self.drift = drift
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        y = self.conv_in(rearrange(x, "b c t (h x) (w y) -> b (c x y) t h w", x=8, y=8), cache)
        return y + self.drift * y.mean(dim=(3, 4), keepdim=True)


def _vae_with(encoder: nn.Module | None = None, decoder: nn.Module | None = None):
    vae = build_vae(TINY, device="meta")
    vae.encoder, vae.decoder = encoder, decoder
    torch.manual_seed(0)
    for part in (encoder, decoder):
        if part is not None:
            nn.init.normal_(part.conv_in.weight, std=part.conv_in.weight[0].numel() ** -0.5)  # O(1) outputs
            nn.init.normal_(part.conv_in.bias, std=0.1)
    return vae


@pytest.mark.parametrize("tile, overlap", [(48, 8), (48, 16), (64, 16), (72, 24), (40, 8)])
@pytest.mark.parametrize("chunk_frames", [4, 8, None])
def test_tiling_is_exact_for_a_spatially_local_network(tile, overlap, chunk_frames):
    # Overlaps 8..24 px are 1..3 latent cells: odd and even blends, in latent (encode) and pixel
    # (decode) units. Any misplaced tile, weight that does not sum to one, or chunk misalignment
    # shows up here as an error far above float rounding.
    vae = _vae_with(LocalEncoder(), LocalDecoder())
    x = torch.rand(1, 3, 13, 104, 152, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole = vae.encode(x, tile_size=None, chunk_frames=None)
    tiled = vae.encode(x, tile_size=tile, tile_overlap=overlap, chunk_frames=chunk_frames)
    # float32 rounding only (convs of different sizes sum in different orders): 1e-5
    torch.testing.assert_close(tiled.mean, whole.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.logvar, whole.logvar, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.decode(whole.mean, tile_size=tile, tile_overlap=overlap, chunk_frames=chunk_frames),
                               vae.decode(whole.mean, tile_size=None, chunk_frames=None), atol=1e-5, rtol=1e-5)


def _max_jump_over_range(diff: torch.Tensor, ramp: int) -> float:
    """Largest step between neighbouring columns of ``diff`` (b, c, t, h, w), in units of the step
    a linear blend over ``ramp`` columns makes between the two tiles."""
    steps = (diff[..., 1:] - diff[..., :-1]).abs().amax(dim=(3, 4))  # per b, c, t
    spread = diff.amax(dim=(3, 4)) - diff.amin(dim=(3, 4))  # tile-to-tile difference, per b, c, t
    clear = spread > 0.02  # where the tiles disagree well above float rounding
    assert clear.float().mean() > 0.5
    return float((steps[clear] / (spread[clear] / ramp)).max())


def _hard_cut(length: int) -> torch.Tensor:
    return (torch.arange(length, dtype=torch.float64) >= length / 2).double()


@pytest.mark.parametrize("overlap", [16, 24])  # 2 and 3 latent cells: even and odd
def test_per_tile_drift_is_blended_without_a_seam(overlap, monkeypatch):
    # One row of two tiles. tiled - untiled is a blend of two per-tile constants: with a linear
    # ramp it changes by at most (difference / ramp) between neighbouring columns; a hard cut (a
    # seam) jumps by the whole difference at once, i.e. `ramp` times more.
    vae = _vae_with(LocalEncoder(drift=0.5), LocalDecoder(drift=0.5))
    # a left-to-right brightness ramp, so the two tiles' statistics differ clearly
    x = torch.rand(1, 3, 5, 64, 104, generator=torch.Generator().manual_seed(2)) - 0.5 + torch.linspace(-0.5, 0.5, 104)
    z = vae.encode(x, tile_size=None).mean
    kwargs = dict(tile_size=72, tile_overlap=overlap)
    assert len(split_axis(104 // 8, 72 // 8, overlap // 8)) == 2 and len(split_axis(64 // 8, 72 // 8, overlap // 8)) == 1

    def jumps() -> tuple[float, float]:
        enc = vae.encode(x, **kwargs).mean - vae.encode(x, tile_size=None).mean
        dec = vae.decode(z, **kwargs) - vae.decode(z, tile_size=None)
        return _max_jump_over_range(enc, overlap // 8), _max_jump_over_range(dec, overlap)

    assert max(jumps()) <= 1.0 + 1e-3
    monkeypatch.setattr(tiling, "_ramp", _hard_cut)  # a deliberately broken blend must be caught
    enc_cut, dec_cut = jumps()
    assert enc_cut > 0.9 * (overlap // 8) and dec_cut > 0.9 * overlap


def test_work_per_step_is_bounded_by_tile_and_chunk_not_by_frame_or_clip():
    decoder = LocalDecoder()
    vae = _vae_with(decoder=decoder)
    for latent_frames, side in ((2, 16), (6, 16), (6, 48)):  # 64 px and 384 px frames, 5 and 21 frames
        decoder.calls.clear()
        vae.decode(torch.zeros(1, 16, latent_frames, side, side), tile_size=128, tile_overlap=32)
        assert max(c[2] for c in decoder.calls) == 1  # one latent frame per chunk (chunk_frames=4)
        assert max(c[3] for c in decoder.calls) <= 128 // 8 and max(c[4] for c in decoder.calls) <= 128 // 8
        assert len(decoder.calls) == latent_frames * len(split_axis(side, 16, 4)) ** 2


def test_progress_callback_counts_steps_and_can_cancel():
    vae = _vae_with(decoder=LocalDecoder())
    z = torch.zeros(1, 16, 3, 24, 24)  # 3 chunks x (2 x 2) tiles at tile 128 px
    seen: list[tuple[int, int]] = []
    vae.decode(z, tile_size=128, tile_overlap=32, on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 12) for i in range(1, 13)]

    class Cancelled(Exception):
        pass

    def cancel_at_five(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 5:
            raise Cancelled

    seen.clear()
    with pytest.raises(Cancelled):
        vae.decode(z, tile_size=128, tile_overlap=32, on_tile=cancel_at_five)
    assert seen[-1] == (5, 12) and len(seen) == 5


# ---------------------------------------------------------------------------------------------
# The real (tiny) VAE: tiled vs untiled
# ---------------------------------------------------------------------------------------------

# Tolerances for the tiny random-weight VAE (block_out_channels 16/16/32/32) on a 32x512 strip,
# tile 320 px / overlap 64 px (two tiles). Tiling is not exact for the real network: each tile
# normalises (per-frame GroupNorm) and attends over its own pixels, and this tiny random network
# has a receptive field of tens of latent cells. Measured (seed 0): encode mean max 0.27 / mean
# 0.037, decode max 0.93 / mean 0.064, against outputs of std ~0.65. A misplaced tile or broken
# weights give mean errors around the signal std.
ENCODE_TOL = dict(max=0.5, mean=0.06)
DECODE_TOL = dict(max=1.5, mean=0.1)
SEAM_FACTOR = 1.6  # jump at the tile border / median jump; measured 0.7 (ours) vs 2.7 (hard cut)


def _border_jump(diff: torch.Tensor, column: int) -> float:
    """Line structure: average tiled - untiled along the border direction (rows), then compare the
    step across the border column with the median step between neighbouring columns."""
    profile = diff.mean(dim=3)  # (b, c, t, w)
    steps = (profile[..., 1:] - profile[..., :-1]).abs().mean(dim=(0, 1, 2))  # (w - 1,)
    return float(steps[column] / steps.median())


def test_real_vae_tiled_matches_untiled(golden_dir, monkeypatch):
    vae = load_vae(golden_dir / "vae_tiny_weights.safetensors", dtype=torch.float32)
    x = torch.rand(1, 3, 5, 32, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kwargs = dict(tile_size=320, tile_overlap=64)
    spans = split_axis(512 // 8, 320 // 8, 64 // 8)
    assert len(spans) == 2
    border = 8 * (spans[1].start + spans[1].blend_in // 2) - 1  # last column of tile 0's half of the overlap

    plain = vae.encode(x, tile_size=None)
    tiled = vae.encode(x, **kwargs)
    enc_err = (tiled.mean - plain.mean).abs()
    print(f"encode tiled vs untiled: max {enc_err.max():.4f} mean {enc_err.mean():.4f}")
    assert enc_err.max() < ENCODE_TOL["max"] and enc_err.mean() < ENCODE_TOL["mean"]

    z = plain.mean
    reference = vae.decode(z, tile_size=None)
    diff = vae.decode(z, **kwargs) - reference
    print(f"decode tiled vs untiled: max {diff.abs().max():.4f} mean {diff.abs().mean():.4f}; "
          f"border jump {_border_jump(diff, border):.2f}x median")
    assert diff.abs().max() < DECODE_TOL["max"] and diff.abs().mean() < DECODE_TOL["mean"]
    assert _border_jump(diff, border) < SEAM_FACTOR

    monkeypatch.setattr(tiling, "_ramp", _hard_cut)  # the same check flags a deliberate seam
    assert _border_jump(vae.decode(z, **kwargs) - reference, border) > SEAM_FACTOR
