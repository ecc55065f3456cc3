"""The SeedVR2 causal video VAE with memory-bounded, tiled and chunked encode/decode.

Conventions (official `VideoAutoencoderKLWrapper`, model-spec §2.3, §2.7, §7):

* ``encode(x)``: x is (b, 3, T, H, W) in [-1, 1] with T = 4n + 1 and H, W multiples of 8. Returns
  the posterior; ``posterior.sample(generator=...)`` is what the official pipeline feeds the DiT
  (after ``* scaling_factor``), ``posterior.mode()`` is the mean.
* ``decode(z)``: z is (b, 16, t', h', w') latents *before* scaling (divide DiT latents by
  ``scaling_factor`` first). Returns (b, 3, 4(t'-1)+1, 8h', 8w'), roughly in [-1, 1].

Memory (see `tiling`): ``tile_size``/``tile_overlap`` (pixels of the image side: the input for
encode, the output for decode) and ``chunk_frames`` (frames per temporal chunk) bound the working
set; frame size and clip length only change the size of the result. ``tile_size=None`` disables
spatial tiling; ``chunk_frames=None`` runs the whole clip at once (the official unsliced path).
Chunking is exact; tiling is not, because each tile normalises (GroupNorm per frame) and attends
(mid block) over its own pixels only. The blended overlaps hide the difference.

What a tile costs (tensor accounting of the real VAE at 4-frame chunks, bf16; cuDNN workspace
comes on top): decode ~13.6 KB per output pixel of the tile (a 512x512 tile ~3.3 GiB), encode
~7.4 KB per input pixel (~1.9 GiB). About 60 % (decode) and 50 % (encode) of that is the causal
state carried between chunks; ``cache_device="cpu"`` keeps it in pinned host RAM instead (the
official ``memory_device``), leaving ~1.2 GiB / ~0.9 GiB on the GPU for a 512x512 tile, at the cost
of moving the state to and from the GPU once per chunk. ``tile_overlap`` costs time, not memory:
the tiles compute ``(1 + (n - 1) * overlap / size)`` times the pixels per axis for n tiles.

Compute runs on the device and in the dtype of the weights (choose them at load time: bf16 is
what the official run uses); norms are computed in fp32. Inputs and outputs may live elsewhere,
e.g. on the CPU: each tile chunk is moved to the compute device as it is needed.

Fast paths (`seedvr2.speed.SpeedOptions`, read from ``vae.speed`` at each call): cuDNN autotuning
scoped to the call, channels-last-3d convs, several equal tiles per call (``tile_batch``), and
``torch.compile`` of the norm -> SiLU -> conv steps (``vae_compile``, `compiled`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..speed import SpeedOptions, set_conv_memory_format, vae_call_context
from .compiled import compiled_scope
from .config import VAEConfig
from .decoder import Decoder
from .encoder import Encoder
from .tiling import ProgressCallback, TilePlan, TimeChunk, frames_of, latent_chunks, run_tiled, split_axis

# Runtime latent normalisation of SeedVR2 (configs_3b/main.yaml and configs_7b/main.yaml,
# `vae.scaling_factor` / `vae.shifting_factor`): DiT latent = (z - shift) * scale.
LATENT_SCALE = 0.9152
LATENT_SHIFT = 0.0

DEFAULT_TILE_SIZE = 512  # pixels; see "Memory" above for what a tile costs
DEFAULT_TILE_OVERLAP = 64  # pixels; 8 latent cells of blending between neighbouring tiles
DEFAULT_CHUNK_FRAMES = 4  # frames per temporal chunk, the official causal slicing (split_size 4)
MIN_TILE_SIZE = 32  # pixels


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) per latent cell; logvar is clamped to
    [-30, 20] as in diffusers' `DiagonalGaussianDistribution`."""

    def __init__(self, moments: Tensor) -> None:  # (b, 2*latent, t', h', w')
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """``mean + std * noise``; ``noise`` defaults to a standard normal draw from ``generator``
        (on the posterior's device). The official pipeline samples (it does not take the mean)."""
        if noise is None:
            if generator is not None and generator.device.type != self.mean.device.type:
                raise ValueError(f"posterior.sample: the generator is on {generator.device} but the posterior is on "
                                 f"{self.mean.device}; create the generator on {self.mean.device.type}")
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        elif tuple(noise.shape) != tuple(self.mean.shape):
            raise ValueError(f"posterior.sample: noise has shape {tuple(noise.shape)}, expected the latent shape "
                             f"{tuple(self.mean.shape)}")
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)


class VideoVAE(nn.Module):
    """SeedVR2's `ema_vae` (8x spatial, 4x temporal, 16 latent channels); keys match the release."""

    scaling_factor = LATENT_SCALE
    shift_factor = LATENT_SHIFT

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.speed = SpeedOptions()  # fast paths of encode/decode (seedvr2.speed)

    @torch.no_grad()
    def encode(self, x: Tensor, *, tile_size: int | None = DEFAULT_TILE_SIZE,
               tile_overlap: int = DEFAULT_TILE_OVERLAP, chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
               cache_device: torch.device | str | None = None, on_tile: ProgressCallback | None = None,
               output_device: torch.device | str | None = None, output_dtype: torch.dtype | None = None,
               ) -> DiagonalGaussian:
        """Encode pixels (b, 3, T, H, W) in [-1, 1] to the posterior over (b, 16, (T-1)/4+1, H/8, W/8).

        ``tile_size``/``tile_overlap`` are in input pixels; outputs default to x's device and dtype.
        ``on_tile(done, total)`` runs after each tile chunk and may raise to cancel.
        """
        self._check_pixels(x)
        f, ft = self.config.spatial_factor, self.config.temporal_factor
        latent_shape = ((x.shape[2] - 1) // ft + 1, x.shape[3] // f, x.shape[4] // f)
        plan = self._plan(latent_shape, tile_size, tile_overlap, chunk_frames, encode=True)
        moments = torch.zeros(x.shape[0], 2 * self.config.latent_channels, *latent_shape,
                              device=output_device or x.device, dtype=output_dtype or x.dtype)
        self._run(self.encoder, x, moments, plan, cache_device, on_tile)
        return DiagonalGaussian(moments)

    @torch.no_grad()
    def decode(self, z: Tensor, *, tile_size: int | None = DEFAULT_TILE_SIZE,
               tile_overlap: int = DEFAULT_TILE_OVERLAP, chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
               cache_device: torch.device | str | None = None, on_tile: ProgressCallback | None = None,
               output_device: torch.device | str | None = None, output_dtype: torch.dtype | None = None,
               ) -> Tensor:
        """Decode latents (b, 16, t', h', w') to pixels (b, 3, 4(t'-1)+1, 8h', 8w').

        ``tile_size``/``tile_overlap`` are in output pixels; the output defaults to z's device and
        dtype. ``on_tile(done, total)`` runs after each tile chunk and may raise to cancel.
        """
        self._check_latents(z)
        f, ft = self.config.spatial_factor, self.config.temporal_factor
        plan = self._plan(tuple(z.shape[2:]), tile_size, tile_overlap, chunk_frames, encode=False)
        out = torch.zeros(z.shape[0], self.config.out_channels, ft * (z.shape[2] - 1) + 1, f * z.shape[3],
                          f * z.shape[4], device=output_device or z.device, dtype=output_dtype or z.dtype)
        self._run(self.decoder, z, out, plan, cache_device, on_tile)
        return out

    def _run(self, half: nn.Module, x: Tensor, out: Tensor, plan: TilePlan, cache_device, on_tile) -> None:
        """Run the encoder or decoder over the plan with this VAE's `speed` options."""
        speed = self.speed
        device, dtype = _weights_device_dtype(half)
        set_conv_memory_format(half, speed.channels_last)
        with vae_call_context(speed, device), compiled_scope(speed.vae_compile):
            run_tiled(half, x, out, plan, device=device, dtype=dtype, cache_device=cache_device, on_tile=on_tile,
                      tile_batch=speed.tile_batch)

    # ---------------------------------------------------------------------------------------
    # Planning and validation
    # ---------------------------------------------------------------------------------------

    def _plan(self, latent_shape: tuple[int, int, int], tile_size: int | None, tile_overlap: int,
              chunk_frames: int | None, *, encode: bool) -> TilePlan:
        f, ft = self.config.spatial_factor, self.config.temporal_factor
        side = "input" if encode else "output"
        if tile_size is None:
            tile, overlap = max(latent_shape[1:]), 0
        else:
            if tile_size < MIN_TILE_SIZE or tile_overlap < 0:
                raise ValueError(f"VAE tiling: tile_size={tile_size} px and tile_overlap={tile_overlap} px; the tile must be "
                                 f"at least {MIN_TILE_SIZE} px and the overlap non-negative")
            tile, overlap = tile_size // f, math.ceil(tile_overlap / f)  # latent cells
            if 3 * overlap > tile:
                raise ValueError(f"VAE tiling: tile_overlap={tile_overlap} px is more than a third of tile_size={tile_size} px "
                                 f"(after rounding to the {f}-px latent grid: {overlap * f} of {tile * f} px), so tiles "
                                 f"other than neighbours would overlap; use tile_overlap <= {(tile // 3) * f} px or a "
                                 "larger tile_size")
        if chunk_frames is not None and (chunk_frames < ft or chunk_frames % ft):
            raise ValueError(f"VAE chunk_frames={chunk_frames}: must be a positive multiple of {ft} {side} frames "
                             "(one latent frame per 4 frames), or None for the whole clip at once")
        latents = latent_chunks(latent_shape[0], None if chunk_frames is None else chunk_frames // ft)
        if encode:
            chunks = [TimeChunk(frames_of(c, ft), c) for c in latents]
        else:
            chunks = [TimeChunk(c, frames_of(c, ft)) for c in latents]
        return TilePlan(rows=split_axis(latent_shape[1], tile, overlap),
                             cols=split_axis(latent_shape[2], tile, overlap), chunks=chunks,
                             in_scale=f if encode else 1, out_scale=1 if encode else f)

    def _check_pixels(self, x: Tensor) -> None:
        cfg, f, ft = self.config, self.config.spatial_factor, self.config.temporal_factor
        what = f"VAE encode: x must be (batch, {cfg.in_channels}, frames, height, width) floats in [-1, 1]"
        _check_tensor(x, what, cfg.in_channels)
        frames, height, width = x.shape[2:]
        if (frames - 1) % ft:
            fix = ft * math.ceil((frames - 1) / ft) + 1
            raise ValueError(f"{what}; got {frames} frames, but the causal VAE needs {ft}n+1 (1, 5, 9, ...). Repeat the "
                             f"last frame up to {fix} frames (as the official pipeline does) and drop the extra frames "
                             "after decoding")
        if height % f or width % f or height == 0 or width == 0:
            raise ValueError(f"{what}; got {width}x{height} (WxH) pixels, but height and width must be positive multiples of "
                             f"{f}. Crop or resize the frames (the official pipeline crops to multiples of 16)")

    def _check_latents(self, z: Tensor) -> None:
        cfg = self.config
        what = f"VAE decode: z must be latents (batch, {cfg.latent_channels}, latent_frames, height/8, width/8)"
        _check_tensor(z, what, cfg.latent_channels)
        if min(z.shape[2:]) == 0:
            raise ValueError(f"{what}; got an empty shape {tuple(z.shape)}")


def _weights_device_dtype(half: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Compute device and dtype: those of the encoder's or decoder's weights."""
    weight = half.conv_in.weight
    if weight.is_meta:
        raise RuntimeError("the VAE has no weights (built on the meta device); load them with seedvr2.load_vae(path)")
    return weight.device, weight.dtype


def _check_tensor(t: Tensor, what: str, channels: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}; got a {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what}; got dtype {t.dtype}. Convert with .float() (and for pixels scale to [-1, 1])")
    if t.ndim != 5:
        hint = " (add the time axis for a single image: x.unsqueeze(2))" if t.ndim == 4 else ""
        raise ValueError(f"{what}; got {t.ndim} dimensions, shape {tuple(t.shape)}{hint}")
    if t.shape[1] != channels:
        hint = " (channels last? use x.permute(0, 4, 1, 2, 3))" if t.shape[-1] == channels else ""
        raise ValueError(f"{what}; got {t.shape[1]} channels, shape {tuple(t.shape)}{hint}")
    if t.shape[0] == 0:
        raise ValueError(f"{what}; got an empty batch")
