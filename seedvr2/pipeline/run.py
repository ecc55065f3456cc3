"""The SeedVR2 one-step upscale: frames in, frames out, one model on the device at a time.

Three phases over all batches (model-spec §2):

1. encode: resize/crop-or-pad, [-1, 1], last-frame padding to 4n+1, VAE posterior *sample*
   (mean + exp(logvar/2)*noise) * 0.9152 -> condition latent, parked on the CPU.
2. DiT: x0 = noise - DiT([noise | latent | 1], pos_emb, t=1000) (Euler endpoint of the lerp
   schedule with v-prediction), parked on the CPU in place of the condition.
3. decode: VAE decode of x0/0.9152, drop the padded frames, colour correction against the
   resized input, crossfade of overlapping batches, write to the sink (+ upscaled alpha).

The caller's frames are read batch by batch and never copied whole; the colour-fix reference
is recomputed from them in the decode phase rather than kept.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..batching import Batch, Crossfade, plan_batches
from ..color import color_correct
from ..dit.tiling import run_dit
from ..placement import ModulePlacement, Placement
from ..preprocess import FrameGeometry, padded_frame_count, to_model_range, to_unit_range
from ..vae.model import DEFAULT_CHUNK_FRAMES, DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, LATENT_SCALE
from .fit import MemoryFit, RunFit
from .noise import NoiseSource, SeededNoise
from .memory import check_host_memory, host_memory_needed
from .output import OUTPUT_DTYPES, FrameSink, TensorSink, to_output
from .settings import UpscaleInputError, UpscaleSettings, validate_upscale_inputs

log = logging.getLogger(__name__)

TIMESTEP = 1000.0      # one-step sampler: the trailing timestep at T
# Frames per chunk in pre/post-processing: about one 4K frame of float32 per tensor, so the
# resize and the colour fix (a few temporaries each) stay in the hundreds of MB on the device.
CHUNK_PIXELS = 1 << 23

ProgressFn = Callable[[str, int, int], None]
InterruptFn = Callable[[], None]


@dataclass(frozen=True)
class VAETiling:
    """How the VAE splits its work (see `seedvr2.vae.model`).

    tile_size/tile_overlap: spatial tiles in pixels (None = whole frames; "auto" = the run's
        memory plan picks it, see `pipeline.fit`). Tiling bounds VRAM to about one tile's
        activations; it is not bit-exact (each tile normalises its own pixels), the overlaps are
        blended.
    chunk_frames: frames per causal temporal chunk (multiple of 4; None = whole batch). Exact.

    With tiling on, the VAE's input and output canvases stay in host memory and tiles move to
    the device one at a time; without it they are built on the device.
    """

    tile_size: int | str | None = DEFAULT_TILE_SIZE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    chunk_frames: int | None = DEFAULT_CHUNK_FRAMES

    def kwargs(self) -> dict:
        return {"tile_size": self.tile_size, "tile_overlap": self.tile_overlap, "chunk_frames": self.chunk_frames}


@dataclass
class UpscaleModels:
    """The loaded models and where they run.

    dit/vae: the modules (called as `dit(vid, txt, vid_shape, txt_shape, timestep)`,
        `vae.encode(x).mean/.logvar`, `vae.decode(z)`).
    pos_emb: the positive text embedding (L, txt_in_dim), any float dtype, any device.
    device: the compute device.
    dit_placement/vae_placement: load()/offload() the model's weights; default: move the whole
        module between `device` and the CPU (`ModulePlacement`).
    vae_tiling: spatial tiles and temporal chunks of the VAE (memory vs. exactness).
    memory: how the run fits the device ("auto" block swap and VAE tiles, out-of-memory
        fallback; `pipeline.fit.MemoryFit`); None = defaults.

    The DiT gets float32 inputs and computes in its own `compute_dtype`; the VAE computes in the
    dtype of its weights and gets its input in that dtype.
    """

    dit: nn.Module
    vae: nn.Module
    pos_emb: torch.Tensor
    device: torch.device | str = "cpu"
    dit_placement: Placement | None = None
    vae_placement: Placement | None = None
    vae_tiling: VAETiling = field(default_factory=lambda: VAETiling())
    memory: MemoryFit | None = None


@dataclass(frozen=True)
class _Run:
    """Per-call facts shared by the phases."""

    frames: torch.Tensor
    geometry: FrameGeometry
    batches: list[Batch]
    settings: UpscaleSettings
    device: torch.device
    noise: NoiseSource
    check_interrupt: InterruptFn
    fit: RunFit

    @property
    def vae_tiling(self) -> VAETiling:
        """The current tiling: the plan's, or smaller after an out-of-memory fallback."""
        return self.fit.vae_tiling

    @property
    def vae_io_device(self) -> torch.device:
        """Where VAE input/output canvases live: host memory when tiling streams tiles."""
        return torch.device("cpu") if self.vae_tiling.tile_size is not None else self.device

    def on_tile(self, done: int, total: int) -> None:
        self.check_interrupt()


def upscale(
    frames: torch.Tensor,
    models: UpscaleModels,
    settings: UpscaleSettings,
    *,
    sink: FrameSink | None = None,
    output_dtype: torch.dtype = torch.float32,
    noise: NoiseSource | None = None,
    progress: ProgressFn | None = None,
    check_interrupt: InterruptFn | None = None,
) -> torch.Tensor | None:
    """Upscale `frames` [T, H, W, C] (uint8, or float in 0..1; C = 3 or 4) with SeedVR2.

    Returns the output [T, H', W', C] (`output_dtype`, float in 0..1 or uint8) on the CPU, or
    None when a `sink` receives the frames instead. Every input frame comes out, in order. RGBA
    input: the alpha channel is resized like the colour (bicubic with antialiasing, clamped),
    never passed through the model, and appended as channel 4.

    progress(phase, done, total) is called per batch for phases "encode", "dit", "decode".
    check_interrupt() is called between batches, before every DiT block, and between VAE tiles
    if the VAE reports them; whatever it raises propagates (models are offloaded on the way out).

    Memory (Hc x Wc = the canvas, the output size rounded up to multiples of 16; n = batch
    frames padded to 4n+1; s = the VAE dtype's itemsize):
    * Host, besides the caller's frames (read per chunk of frames, never copied whole) and the
      output (a TensorSink holds T*H'*W'*C*itemsize; a streaming sink one chunk): the latents of
      all batches, float32, about Hc*Wc/4 bytes per frame (2% of a float32 RGB output);
      `temporal_overlap` held frames, 12*H'*W' bytes each; with VAE tiling on, one batch's input
      and decoded canvases, 3*n*Hc*Wc*s bytes each.
    * Device: the weights of one model at a time (what its placement loads); the VAE's
      activations (bounded by tiling); without tiling, one batch's canvases (3*n*Hc*Wc*s bytes
      each); and float32 pre/post-processing temporaries of about CHUNK_PIXELS (8 Mpx) per
      tensor, a few tensors at a time (the colour fix), i.e. a few hundred MB.
    """
    geometry = validate_upscale_inputs(frames, settings)
    device = torch.device(models.device)
    _check_pos_emb(models.pos_emb, models.dit)
    dit_place = models.dit_placement or ModulePlacement(models.dit, device)
    vae_place = models.vae_placement or ModulePlacement(models.vae, device)
    fit = RunFit.start(models.dit, models.vae, models.vae_tiling, dit_place, tuple(frames.shape), geometry.canvas_hw,
                       settings, device, models.memory)
    num_frames, _, _, channels = frames.shape
    _check_sink(sink, num_frames, geometry, channels)
    vae_dtype = module_dtype(models.vae)
    estimate = host_memory_needed(
        num_frames, channels, geometry, settings,
        output_dtype=output_dtype if sink is None else None,
        vae_itemsize=torch.empty((), dtype=vae_dtype).element_size(),
        canvas_on_host=fit.vae_tiling.tile_size is not None or device.type == "cpu")
    check_host_memory(estimate, geometry, settings, num_frames)  # before the first large allocation
    if sink is None:
        out = TensorSink(num_frames, *geometry.output_hw, channels, output_dtype)
    else:
        out = sink
    run = _Run(
        frames=frames,
        geometry=geometry,
        batches=plan_batches(num_frames, settings.batch_size, settings.temporal_overlap),
        settings=settings,
        device=device,
        noise=noise if noise is not None else SeededNoise(settings.seed),
        check_interrupt=check_interrupt or (lambda: None),
        fit=fit,
    )
    report = progress or (lambda phase, done, total: None)
    log.info("SeedVR2: %d frames %s -> %s (canvas %s), %d batch(es)", num_frames, wxh(geometry.input_hw),
             wxh(geometry.output_hw), wxh(geometry.canvas_hw), len(run.batches))

    with torch.no_grad():
        with _loaded(vae_place):
            latents = [fit.retry("encode", lambda b=b: _encode(run, models.vae, vae_dtype, b))
                       for b in _each(run, "encode", report)]
        with _loaded(dit_place), _interrupt_per_block(models.dit, run.check_interrupt):
            pos_emb = models.pos_emb.to(device, torch.float32)
            for b in _each(run, "dit", report):
                latents[b.index] = fit.retry("dit", lambda b=b: _denoise(run, models.dit, pos_emb, b, latents[b.index]))
        with _loaded(vae_place):
            crossfade = Crossfade(hold_device="cpu")
            for b in _each(run, "decode", report):
                _decode(run, models.vae, vae_dtype, b, latents[b.index], crossfade, out)
                latents[b.index] = None
            crossfade.finish()
    return out.result() if sink is None else None


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the VAE computes in: its first 16/32-bit floating parameter."""
    for p in module.parameters():
        if p.dtype in (torch.float32, torch.float16, torch.bfloat16):
            return p.dtype
    return torch.bfloat16


class NonFiniteOutputError(RuntimeError):
    """A model produced NaN or infinite values; the message names the model and the likely cause."""


def wxh(hw: tuple[int, int]) -> str:
    """(height, width) -> "WxH", the order every log line and message uses."""
    return f"{hw[1]}x{hw[0]}"


def _check_finite(x: torch.Tensor, what: str, batch: Batch, cause: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteOutputError(
            f"{what} produced NaN or infinite values (batch {batch.index + 1}, frames {batch.start}..{batch.stop - 1}), "
            f"so the output would be black or garbage. Likely cause: {cause}")


_DIT_CAUSE = ("a corrupt or wrongly converted DiT checkpoint or text embedding (check the file's SHA-256 against "
              "the published one, or download it again), or fp16 overflow: use dtype bf16 (or fp32)")
_VAE_CAUSE = ("a corrupt or wrongly converted VAE checkpoint (download it again), or fp16 overflow in the VAE: "
              "use dtype bf16 (or fp32)")


def _check_sink(sink: object, num_frames: int, geometry: FrameGeometry, channels: int) -> None:
    """A sink must take this run's frames: a `write(start, frames)` method, an output dtype, and
    for a TensorSink exactly the [T, H', W', C] shape of the output."""
    if sink is None:
        return
    oh, ow = geometry.output_hw
    if not callable(getattr(sink, "write", None)) or getattr(sink, "dtype", None) not in OUTPUT_DTYPES:
        raise UpscaleInputError(f"sink must have write(start, frames) and a dtype among {OUTPUT_DTYPES}, e.g. "
                                f"TensorSink({num_frames}, {oh}, {ow}, {channels}); got {type(sink).__name__}")
    shape = tuple(getattr(sink, "frames", torch.empty(0)).shape) if isinstance(sink, TensorSink) else None
    if shape is not None and shape != (num_frames, oh, ow, channels):
        raise UpscaleInputError(
            f"sink holds frames of shape {list(shape)} but this run writes {num_frames} frame(s) of {ow}x{oh} (WxH) "
            f"with {channels} channels: use TensorSink({num_frames}, {oh}, {ow}, {channels})")


def _check_pos_emb(pos_emb: object, dit: nn.Module) -> None:
    width = getattr(getattr(dit, "config", None), "txt_in_dim", None)
    if not isinstance(pos_emb, torch.Tensor) or pos_emb.dim() != 2 or not pos_emb.is_floating_point():
        shape = tuple(pos_emb.shape) if isinstance(pos_emb, torch.Tensor) else type(pos_emb).__name__
        raise UpscaleInputError(f"pos_emb must be a float tensor (tokens, channels), e.g. the official 58x5120; got {shape}")
    if (width is not None and pos_emb.shape[1] != width) or pos_emb.shape[0] < 1:
        raise UpscaleInputError(f"pos_emb has shape {tuple(pos_emb.shape)} but this DiT takes text embeddings of width "
                                f"{width}; use the embedding that ships with the model (pos_emb.pt, 58x5120)")
    if pos_emb.device.type != "meta" and not bool(torch.isfinite(pos_emb).all()):
        raise UpscaleInputError("pos_emb (the text embedding) contains NaN or infinite values: the file is corrupt or "
                                "wrongly converted; use pos_emb.pt from ByteDance-Seed/SeedVR2-3B")


def _each(run: _Run, phase: str, report: ProgressFn) -> Iterator[Batch]:
    total = len(run.batches)
    report(phase, 0, total)
    for batch in run.batches:
        run.check_interrupt()
        yield batch
        report(phase, batch.index + 1, total)


@contextlib.contextmanager
def _loaded(placement: Placement) -> Iterator[None]:
    """The model's weights on the device for the block; offloaded after, also on error/interrupt."""
    try:
        placement.load()
        yield
    finally:
        placement.offload()


@contextlib.contextmanager
def _interrupt_per_block(dit: nn.Module, check_interrupt: InterruptFn) -> Iterator[None]:
    """Check for interruption before every DiT block; the hooks live only for this call."""
    blocks = getattr(dit, "blocks", None)
    handles = [blk.register_forward_pre_hook(lambda module, args: check_interrupt()) for blk in (blocks or [])]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _chunks(length: int, pixels_per_frame: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_PIXELS // max(1, pixels_per_frame))
    for a in range(0, length, step):
        yield a, min(a + step, length)


def _read_frames(frames: torch.Tensor, start: int, stop: int, device: torch.device,
                 channels: slice = slice(0, 3)) -> torch.Tensor:
    """Caller's frames [start, stop), `channels` -> (n, c, H, W) float32 in [0, 1] on `device`."""
    x = frames[start:stop, ..., channels].to(device)
    # out of place: on the CPU `.to()`/`.float()` may return the caller's own tensor
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0.0, 1.0)
    return x.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Phase 1: encode
# ---------------------------------------------------------------------------------------------

def _encode(run: _Run, vae: nn.Module, dtype: torch.dtype, batch: Batch) -> torch.Tensor:
    """One batch -> condition latent (t, h, w, 16) float32 on the CPU."""
    x = _vae_input(run, batch, dtype)                                     # (1, 3, T4, Hc, Wc)
    posterior = vae.encode(x, **run.vae_tiling.kwargs(), on_tile=run.on_tile)
    del x  # the canvas is the largest tensor of the phase; free it before sampling
    mean, logvar = posterior.mean, posterior.logvar                       # (1, 16, t, h, w)
    eps = run.noise.posterior_noise(batch.index, tuple(mean.shape)).to(mean.device)
    z = mean.float() + torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0)) * eps  # posterior sample
    return (z[0].permute(1, 2, 3, 0) * LATENT_SCALE).cpu()               # (t, h, w, 16)


def _vae_input(run: _Run, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    """Preprocess a batch chunk by chunk into one (1, 3, T4, Hc, Wc) canvas in the VAE dtype.

    T4 is the batch length padded to 4n+1 by repeating the last frame (upstream `cut_videos`).
    """
    geo = run.geometry
    hc, wc = geo.canvas_hw
    x = torch.empty((3, padded_frame_count(batch.length), hc, wc), dtype=dtype, device=run.vae_io_device)
    for a, b in _chunks(batch.length, max(hc * wc, geo.resized_hw[0] * geo.resized_hw[1])):
        rgb = _read_frames(run.frames, batch.start + a, batch.start + b, run.device)
        x[:, a:b] = to_model_range(geo.to_canvas(geo.reference(rgb))).permute(1, 0, 2, 3).to(x.device, dtype)
    x[:, batch.length:] = x[:, batch.length - 1:batch.length]
    return x[None]


# ---------------------------------------------------------------------------------------------
# Phase 2: DiT
# ---------------------------------------------------------------------------------------------

def _denoise(run: _Run, dit: nn.Module, pos_emb: torch.Tensor, batch: Batch, latent: torch.Tensor) -> torch.Tensor:
    """Condition latent (t, h, w, 16) -> x0 latent (t, h, w, 16), float32 on the CPU."""
    t, h, w, c = latent.shape
    cond = latent.to(run.device, torch.float32)
    noise = run.noise.latent_noise(batch.index, (t, h, w, c)).to(run.device)
    ones = torch.ones((t, h, w, 1), device=run.device)
    vid = torch.cat([noise, cond, ones], dim=-1).reshape(t * h * w, 2 * c + 1)
    vid_shape = torch.tensor([[t, h, w]], dtype=torch.long, device=run.device)
    txt_shape = torch.tensor([[pos_emb.shape[0]]], dtype=torch.long, device=run.device)
    timestep = torch.tensor([TIMESTEP], dtype=torch.float32, device=run.device)
    pred = run_dit(dit, vid, pos_emb, vid_shape, txt_shape, timestep, run.fit.dit_tile)  # (t*h*w, 16) v-prediction
    x0 = noise - pred.float().reshape(t, h, w, c)
    _check_finite(x0, "the DiT", batch, _DIT_CAUSE)
    return x0.cpu()


# ---------------------------------------------------------------------------------------------
# Phase 3: decode
# ---------------------------------------------------------------------------------------------

def _decode(run: _Run, vae: nn.Module, dtype: torch.dtype, batch: Batch, x0: torch.Tensor,
            crossfade: Crossfade, sink: FrameSink) -> None:
    """x0 latent -> colour-corrected output frames of this batch, crossfaded into the sink."""
    z = (x0 / LATENT_SCALE).permute(3, 0, 1, 2)[None].to(run.vae_io_device, dtype)  # (1, 16, t, h, w)
    decoded = run.fit.retry("decode", lambda: vae.decode(z, **run.vae_tiling.kwargs(), on_tile=run.on_tile))[0]
    # (3, T4, Hc, Wc); a retry (out of memory) has pushed nothing into the crossfade yet
    geo = run.geometry
    next_overlap = run.batches[batch.index + 1].overlap if batch.index + 1 < len(run.batches) else 0
    crossfade.start_batch(batch, hold=next_overlap)
    oh, ow = geo.output_hw
    for a, b in _chunks(batch.length, max(oh * ow, geo.resized_hw[0] * geo.resized_hw[1])):
        content = geo.trim(decoded[:, a:b].permute(1, 0, 2, 3)).to(run.device, torch.float32)  # (n, 3, oh, ow)
        _check_finite(content, "the VAE decode", batch, _VAE_CAUSE)
        if run.settings.color_correction != "none":
            rgb = _read_frames(run.frames, batch.start + a, batch.start + b, run.device)
            content = color_correct(content, to_model_range(geo.reference(rgb)), run.settings.color_correction)
        for start, piece in crossfade.push(to_unit_range(content)):
            _write(run, sink, start, piece)
    crossfade.end_batch()


def _write(run: _Run, sink: FrameSink, start: int, unit: torch.Tensor) -> None:
    """(n, 3, H, W) in [0, 1] on the device -> sink frames [n, H, W, C] on the CPU."""
    if run.frames.shape[-1] == 4:
        alpha = _read_frames(run.frames, start, start + unit.shape[0], run.device, channels=slice(3, 4))
        unit = torch.cat([unit, run.geometry.reference(alpha)], dim=1)
    sink.write(start, to_output(unit.permute(0, 2, 3, 1), sink.dtype).cpu())
