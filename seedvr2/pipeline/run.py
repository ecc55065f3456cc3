"""The SeedVR2 one-step upscale: frames in, frames out, one model on the device at a time.

Per temporal batch (model-spec §2), three steps:

1. encode: resize/crop-or-pad, [-1, 1], last-frame padding to 4n+1, VAE posterior *sample*
   (mean + exp(logvar/2)*noise) * 0.9152 -> condition latent, parked on the CPU.
2. DiT: x0 = noise - DiT([noise | latent | 1], pos_emb, t=1000) (Euler endpoint of the lerp
   schedule with v-prediction), parked on the CPU in place of the condition.
3. decode: VAE decode of x0/0.9152, drop the padded frames, colour correction against the
   resized input -> the batch's output before the crossfade (`stream.BatchOutput`).

A batch is a pure function of its input frames, the settings and its per-batch noise, so the
batches are independent work items; the `stream.Joiner` crossfades their outputs in order into
the sink. `upscale` runs them phase-major (all encodes of a window of batches, then all DiT
calls, then all decodes: each model loads once per window), window after window, so host memory
holds one window's latents (and, for a lazy source, its input frames) whatever the video's
length. The default window covers the whole run when its latents fit `WINDOW_BYTES`, which keeps
short runs exactly as before (one load of each model). `run_batches` is the same loop for any
list of batches (the Ray workers run it one batch at a time, `seedvr2.distributed`).

With a `ResumeStore`, each batch's x0 is stored as soon as its DiT call ends and batches already
stored skip encode and DiT (their decode runs again: it is deterministic).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..batching import Batch, plan_batches
from ..color import band_rows, color_correct, color_correct_bands
from ..dit.tiling import run_dit
from ..placement import ModulePlacement, Placement
from ..preprocess import FrameGeometry, padded_frame_count, plan_geometry, to_model_range, to_unit_range
from ..vae.model import DEFAULT_CHUNK_FRAMES, DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, LATENT_SCALE
from .fit import MemoryFit, RunFit
from .noise import NoiseSource, SeededNoise
from .memory import check_host_memory, host_memory_needed
from .output import OUTPUT_DTYPES, FrameSink, TensorSink, to_output
from .settings import UpscaleInputError, UpscaleSettings, check_frames, check_settings, validate_upscale_inputs
from .store import ResumeStore
from .stream import BatchOutput, FrameSource, Joiner, TensorSource, as_source, split_for_crossfade

log = logging.getLogger(__name__)

TIMESTEP = 1000.0      # one-step sampler: the trailing timestep at T
# Frames per chunk in pre/post-processing: about one 4K frame of float32 per tensor, so the
# resize and the colour fix (a few temporaries each) stay in the hundreds of MB on the device.
CHUNK_PIXELS = 1 << 23
# Output pixels a frame may have before the decode's post-processing (colour fix and conversion to
# the output range and dtype) runs on it in row bands of about this many pixels (halo included,
# `color.color_correct_bands`) instead of whole: device memory is then a band's temporaries plus
# the frame's colour-fix reference, not ~10 frame-sized tensors. Frames up to 4K (8.3 Mpx) stay whole.
POST_TILE_PIXELS = CHUNK_PIXELS
# Host bytes a window's parked latents and lazily read input frames may take (see the module
# docstring): a window covers as many batches as fit, at least one.
WINDOW_BYTES = 1 << 30

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
    """Per-call facts shared by the steps."""

    geometry: FrameGeometry
    batches: list[Batch]
    settings: UpscaleSettings
    device: torch.device
    noise: NoiseSource
    check_interrupt: InterruptFn
    fit: RunFit
    output_dtype: torch.dtype
    channels: int

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
    frames: torch.Tensor | FrameSource,
    models: UpscaleModels,
    settings: UpscaleSettings,
    *,
    sink: FrameSink | None = None,
    output_dtype: torch.dtype = torch.float32,
    noise: NoiseSource | None = None,
    progress: ProgressFn | None = None,
    check_interrupt: InterruptFn | None = None,
    window: int | None = None,
    resume: ResumeStore | None = None,
) -> torch.Tensor | None:
    """Upscale `frames` [T, H, W, C] (uint8, or float in 0..1; C = 3 or 4) with SeedVR2.

    Returns the output [T, H', W', C] (`output_dtype`, float in 0..1 or uint8) on the CPU, or
    None when a `sink` receives the frames instead. Every input frame comes out, in order. RGBA
    input: the alpha channel is resized like the colour (bicubic with antialiasing, clamped),
    never passed through the model, and appended as channel 4.

    frames: a tensor, or a `FrameSource` read lazily window by window (`video_io.VideoSource`).
    window: batches per phase-major window (None: as many as fit `WINDOW_BYTES`, see the module
        docstring); the output does not depend on it.
    resume: a `ResumeStore`: finished batches are stored there and stored ones are not
        recomputed (its key gets the settings and frame shape added, so a store of another run
        is refused).

    progress(phase, done, total) is called per batch for phases "encode", "dit", "decode"
    (done counts the whole run's batches of that phase; stored batches count as encoded and denoised).
    check_interrupt() is called between batches, before every DiT block, and between VAE tiles
    if the VAE reports them; whatever it raises propagates (models are offloaded on the way out).

    Memory (Hc x Wc = the canvas, the output size rounded up to multiples of 16; n = batch
    frames padded to 4n+1; s = the VAE dtype's itemsize):
    * Host, besides the caller's frames (read per chunk of frames, never copied whole; a lazy
      source holds one window's frames) and the output (a TensorSink holds T*H'*W'*C*itemsize; a
      streaming sink one batch): the latents of one window's batches, float32, about Hc*Wc/4
      bytes per frame (2% of a float32 RGB output); one batch's output before the crossfade
      (float32 where it blends, the sink dtype elsewhere); `temporal_overlap` held frames,
      12*H'*W' bytes each; with VAE tiling on, one batch's input and decoded canvases,
      3*n*Hc*Wc*s bytes each.
    * Device: the weights of one model at a time (what its placement loads); the VAE's
      activations (bounded by tiling); without tiling, one batch's canvases (3*n*Hc*Wc*s bytes
      each); and float32 pre/post-processing temporaries of about CHUNK_PIXELS (8 Mpx) per
      tensor, a few tensors at a time (the colour fix), i.e. a few hundred MB. A frame of more
      than POST_TILE_PIXELS output pixels is colour-fixed and converted in row bands of that
      size: its whole reference (12 B per output pixel) plus one band's temporaries.
    """
    source = as_source(frames)
    geometry = validate_source(source, settings)
    num_frames, _, _, channels = source.shape
    _check_sink(sink, num_frames, geometry, channels)
    if sink is None and output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output dtype must be one of {OUTPUT_DTYPES}, got {output_dtype}")
    steps = make_steps(models, settings, tuple(source.shape), geometry, output_dtype if sink is None else sink.dtype,
                       noise=noise, progress=progress, check_interrupt=check_interrupt)
    run = steps.r
    windows = plan_windows(run.batches, geometry, channels, lazy=not isinstance(source, TensorSource), window=window)
    estimate = host_memory_needed(
        num_frames, channels, geometry, settings,
        output_dtype=output_dtype if sink is None else None,
        vae_itemsize=torch.empty((), dtype=steps.vae_dtype).element_size(),
        canvas_on_host=run.fit.vae_tiling.tile_size is not None or run.device.type == "cpu")
    estimate = window_estimate(estimate, windows, geometry)
    check_host_memory(estimate, geometry, settings, num_frames)  # before the first large allocation
    out = TensorSink(num_frames, *geometry.output_hw, channels, output_dtype) if sink is None else sink
    if resume is not None:
        resume = bind_store(resume, source, settings, models.vae_tiling)
    log.info("SeedVR2: %d frames %s -> %s (canvas %s), %d batch(es) in %d window(s)", num_frames,
             wxh(geometry.input_hw), wxh(geometry.output_hw), wxh(geometry.canvas_hw), len(run.batches), len(windows))

    joiner = Joiner(run.batches, out)
    with torch.no_grad():
        for batches in windows:
            first, last = batches[0], batches[-1]
            window_frames = source.read(first.start, last.stop)
            frames_of = lambda b, w=window_frames, s=first.start: w[b.start - s:b.stop - s]  # noqa: E731
            for output in steps.run(batches, frames_of, resume):
                joiner.add(output)
            del window_frames
    joiner.finish()
    return out.result() if sink is None else None


def make_steps(models: UpscaleModels, settings: UpscaleSettings, shape: tuple[int, int, int, int],
               geometry: FrameGeometry, output_dtype: torch.dtype, *, noise: NoiseSource | None = None,
               progress: ProgressFn | None = None, check_interrupt: InterruptFn | None = None) -> "BatchSteps":
    """The per-batch steps of a run of frames shaped `shape` [T, H, W, C] with these models
    (memory plan resolved for the device: `RunFit.start`)."""
    device = torch.device(models.device)
    _check_pos_emb(models.pos_emb, models.dit)
    dit_place = models.dit_placement or ModulePlacement(models.dit, device)
    vae_place = models.vae_placement or ModulePlacement(models.vae, device)
    fit = RunFit.start(models.dit, models.vae, models.vae_tiling, dit_place, tuple(shape), geometry.canvas_hw,
                       settings, device, models.memory)
    run = _Run(
        geometry=geometry,
        batches=plan_batches(shape[0], settings.batch_size, settings.temporal_overlap),
        settings=settings,
        device=device,
        noise=noise if noise is not None else SeededNoise(settings.seed),
        check_interrupt=check_interrupt or (lambda: None),
        fit=fit,
        output_dtype=output_dtype,
        channels=shape[-1],
    )
    return BatchSteps(run, models, dit_place, vae_place, module_dtype(models.vae), progress)


def validate_source(source: FrameSource, settings: UpscaleSettings) -> FrameGeometry:
    """`validate_upscale_inputs` for a tensor; for a lazy source, its shape and first frame."""
    if isinstance(source, TensorSource):
        return validate_upscale_inputs(source.frames, settings)
    check_settings(settings)
    shape = tuple(getattr(source, "shape", ()))
    if len(shape) != 4 or not callable(getattr(source, "read", None)):
        raise UpscaleInputError(f"frames must be a tensor [T, H, W, C] or a FrameSource (shape, dtype, read); "
                                f"got {type(source).__name__}")
    if shape[0] < 1:
        raise UpscaleInputError("frames is empty (0 frames): there is nothing to upscale")
    check_frames(source.read(0, 1))
    try:
        return plan_geometry(shape[1], shape[2], settings.resize_rule)
    except ValueError as exc:
        raise UpscaleInputError(str(exc)) from None


def latent_shape(batch: Batch, geometry: FrameGeometry) -> tuple[int, int, int, int]:
    """A batch's condition and x0 latent shape (t, h, w, 16): 4x fewer frames (+1), 8x smaller sides."""
    hc, wc = geometry.canvas_hw
    return ((padded_frame_count(batch.length) - 1) // 4 + 1, hc // 8, wc // 8, 16)


def _latent_bytes(batch: Batch, geometry: FrameGeometry) -> int:
    return math.prod(latent_shape(batch, geometry)) * 4  # float32


def plan_windows(batches: list[Batch], geometry: FrameGeometry, channels: int, *, lazy: bool,
                 window: int | None = None) -> list[list[Batch]]:
    """Consecutive groups of batches run phase-major: `window` batches each, or (None) as many
    as keep parked latents (and a lazy source's input frames) under `WINDOW_BYTES`."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise UpscaleInputError(f"window must be a whole number of batches >= 1 (or None for auto), got {window!r}")
        size = window
    else:
        h, w = geometry.input_hw
        per = [_latent_bytes(b, geometry) + (b.length * h * w * channels if lazy else 0) for b in batches]
        size, total = 0, 0
        for nbytes in per:
            if size and total + nbytes > WINDOW_BYTES:
                break
            size, total = size + 1, total + nbytes
    return [batches[i:i + size] for i in range(0, len(batches), size)]


def window_estimate(estimate, windows: list[list[Batch]], geometry: FrameGeometry):
    """The memory estimate with latents of the largest window instead of the whole run."""
    latents = max(sum(_latent_bytes(b, geometry) for b in w) for w in windows)
    return dataclasses.replace(estimate, latents=min(estimate.latents, latents))


def bind_store(store: ResumeStore, source: FrameSource, settings: UpscaleSettings,
               tiling: VAETiling) -> ResumeStore:
    """The store bound to this run: its key completed with the input (unless the caller named
    it), the frame shape, the settings and the configured VAE tiling."""
    more = {"frames": list(source.shape), "settings": dataclasses.asdict(settings), "vae_tiling": tiling.kwargs()}
    if "input" not in store.key:
        more["input"] = source.identity()
    return store.bind(more)


class BatchSteps:
    """The per-batch steps of one run with its models: `run(batches, frames_of, store)` yields
    each batch's `BatchOutput` (phase-major over `batches`: one load of each model)."""

    def __init__(self, run: _Run, models: UpscaleModels, dit_place: Placement, vae_place: Placement,
                 vae_dtype: torch.dtype, progress: ProgressFn | None = None):
        self.r, self.models = run, models
        self.dit_place, self.vae_place, self.vae_dtype = dit_place, vae_place, vae_dtype
        self.report = progress or (lambda phase, done, total: None)
        self.done = {"encode": 0, "dit": 0, "decode": 0}
        self.begun: set[str] = set()
        self.computed = 0  # batches that ran the DiT (not found in the store)

    def _begin(self, phase: str) -> None:
        """Report the phase's start (done=0) once, before its first batch's work: a progress bar
        or timer (bench/e2e.py) measures the phase from here."""
        if phase not in self.begun:
            self.begun.add(phase)
            self.report(phase, 0, len(self.r.batches))

    def _step(self, phase: str) -> None:
        self._begin(phase)
        self.done[phase] += 1
        self.report(phase, self.done[phase], len(self.r.batches))

    def run(self, batches: list[Batch], frames_of: Callable[[Batch], torch.Tensor],
            store: ResumeStore | None = None, x0: dict[int, torch.Tensor] | None = None,
            on_x0: Callable[[Batch, torch.Tensor], None] | None = None) -> Iterator[BatchOutput]:
        """Encode and denoise the batches without a stored (or given, `x0`) result, then decode all."""
        run, models, fit = self.r, self.models, self.r.fit
        x0 = dict(x0 or {})
        for b in batches:
            if b.index not in x0 and store is not None:
                found = store.load(b.index, self.latent_shape(b))
                if found is not None:
                    x0[b.index] = found
        todo = [b for b in batches if b.index not in x0]
        for _ in range(len(batches) - len(todo)):
            self._step("encode")
            self._step("dit")
        if todo:
            latents = {}
            with _loaded(self.vae_place):
                self._begin("encode")
                for b in todo:
                    run.check_interrupt()
                    latents[b.index] = fit.retry("encode", lambda b=b: _encode(run, models.vae, self.vae_dtype, b,
                                                                                  frames_of(b)))
                    self._step("encode")
            with _loaded(self.dit_place), _interrupt_per_block(models.dit, run.check_interrupt):
                pos_emb = models.pos_emb.to(run.device, torch.float32)
                self._begin("dit")
                for b in todo:
                    run.check_interrupt()
                    cond = latents.pop(b.index)  # outside the attempt: an out-of-memory retry needs it again
                    x0[b.index] = fit.retry("dit", lambda b=b, c=cond: _denoise(run, models.dit, pos_emb, b, c))
                    del cond
                    self.computed += 1
                    if store is not None:
                        store.save(b.index, x0[b.index], (b.start, b.stop))
                    if on_x0 is not None:
                        on_x0(b, x0[b.index])
                    self._step("dit")
        with _loaded(self.vae_place):
            self._begin("decode")
            for b in batches:
                run.check_interrupt()
                output = _decode(run, models.vae, self.vae_dtype, b, x0.pop(b.index), frames_of(b))
                self._step("decode")
                yield output

    def latent_shape(self, batch: Batch) -> tuple[int, int, int, int]:
        return latent_shape(batch, self.r.geometry)


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


def _output_chunks(batch: Batch, geo: FrameGeometry) -> Iterator[tuple[int, int]]:
    """The batch's frames in chunks for post-processing: each frame counted at the larger of its
    output and resized-input size (the colour fix holds both)."""
    oh, ow = geo.output_hw
    return _chunks(batch.length, max(oh * ow, geo.resized_hw[0] * geo.resized_hw[1]))


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

def _encode(run: _Run, vae: nn.Module, dtype: torch.dtype, batch: Batch, frames: torch.Tensor) -> torch.Tensor:
    """One batch (its input `frames` [n, H, W, C]) -> condition latent (t, h, w, 16) float32 on the CPU."""
    x = _vae_input(run, batch, frames, dtype)                                   # (1, 3, T4, Hc, Wc)
    posterior = vae.encode(x, **run.vae_tiling.kwargs(), on_tile=run.on_tile)
    del x  # the canvas is the largest tensor of the phase; free it before sampling
    mean, logvar = posterior.mean, posterior.logvar                       # (1, 16, t, h, w)
    eps = run.noise.posterior_noise(batch.index, tuple(mean.shape)).to(mean.device)
    z = mean.float() + torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0)) * eps  # posterior sample
    return (z[0].permute(1, 2, 3, 0) * LATENT_SCALE).cpu()               # (t, h, w, 16)


def _vae_input(run: _Run, batch: Batch, frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Preprocess a batch chunk by chunk into one (1, 3, T4, Hc, Wc) canvas in the VAE dtype.

    T4 is the batch length padded to 4n+1 by repeating the last frame (upstream `cut_videos`).
    """
    geo = run.geometry
    hc, wc = geo.canvas_hw
    x = torch.empty((3, padded_frame_count(batch.length), hc, wc), dtype=dtype, device=run.vae_io_device)
    for a, b in _chunks(batch.length, max(hc * wc, geo.resized_hw[0] * geo.resized_hw[1])):
        rgb = _read_frames(frames, a, b, run.device)
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
            frames: torch.Tensor) -> BatchOutput:
    """x0 latent -> this batch's colour-corrected output frames before the crossfade.

    `frames`: the batch's input frames [n, H, W, C] (the colour-fix reference and the alpha).
    """
    z = (x0 / LATENT_SCALE).permute(3, 0, 1, 2)[None].to(run.vae_io_device, dtype)  # (1, 16, t, h, w)
    decoded = run.fit.retry("decode", lambda: vae.decode(z, **run.vae_tiling.kwargs(), on_tile=run.on_tile))[0]
    # (3, T4, Hc, Wc)
    geo = run.geometry
    pieces = _post_process(run, batch, decoded, frames)
    alpha = None
    if run.channels == 4:
        alpha = torch.cat([to_output(geo.reference(_read_frames(frames, a, b, run.device, channels=slice(3, 4))),
                                     run.output_dtype).cpu()
                           for a, b in _output_chunks(batch, geo)])
    return BatchOutput(batch, pieces, alpha)


def _post_process(run: _Run, batch: Batch, decoded: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
    """The batch's decoded canvas (3, T4, Hc, Wc) -> its output pieces on the CPU (`BatchOutput.pieces`):
    trimmed, checked finite, colour-corrected against the batch's input `frames` and converted.
    Frames of up to POST_TILE_PIXELS output pixels go whole, a chunk of frames at a time; larger
    ones one at a time in row bands (`bench/color_chunks.py` measures both)."""
    hold = run.batches[batch.index + 1].overlap if batch.index + 1 < len(run.batches) else 0
    oh, ow = run.geometry.output_hw
    if oh * ow > POST_TILE_PIXELS:
        return [_post_process_bands(run, batch, decoded, frames, f, hold) for f in range(batch.length)]
    return _post_process_chunks(run, batch, decoded, frames, hold)


def _post_process_chunks(run: _Run, batch: Batch, decoded: torch.Tensor, frames: torch.Tensor,
                         hold: int) -> list[torch.Tensor]:
    """The batch's decoded canvas (3, T4, Hc, Wc) -> its output pieces on the CPU: colour fix and
    conversion of whole frames, a chunk of about CHUNK_PIXELS per tensor at a time."""
    geo = run.geometry
    pieces: list[torch.Tensor] = []
    for a, b in _output_chunks(batch, geo):
        content = geo.trim(decoded[:, a:b].permute(1, 0, 2, 3)).to(run.device, torch.float32)  # (n, 3, oh, ow)
        _check_finite(content, "the VAE decode", batch, _VAE_CAUSE)
        if run.settings.color_correction != "none":
            rgb = _read_frames(frames, a, b, run.device)
            content = color_correct(content, to_model_range(geo.reference(rgb)), run.settings.color_correction)
        # frames a..b-1 of the batch: those before `overlap` or in the last `hold` may still be blended
        pieces += split_for_crossfade(to_unit_range(content), batch.overlap - a, hold - (batch.length - b),
                                      run.output_dtype)
    return pieces


def _post_process_bands(run: _Run, batch: Batch, decoded: torch.Tensor, frames: torch.Tensor, f: int,
                        hold: int) -> torch.Tensor:
    """Frame `f` of the batch's decoded canvas (3, T4, Hc, Wc) -> its output piece (1, 3, oh, ow)
    on the CPU, colour-corrected and converted in row bands of about `POST_TILE_PIXELS` pixels.

    Equal to the whole-frame post-processing (`color.color_correct_bands` says how exactly). On
    the device at a time: the colour-fix reference, whole (the same `geo.reference` resize as
    whole frames: a band-wise bicubic resize would weigh input pixels by their position in the
    band, not the frame, and change the output; it is one float32 tensor, 12 B per pixel), and
    one band's content, corrections and conversion, each at most about POST_TILE_PIXELS.
    """
    geo, method = run.geometry, run.settings.color_correction
    oh, ow = geo.output_hw

    def content(start: int, stop: int) -> torch.Tensor:
        rows = decoded[:, f:f + 1, start:stop, :ow].permute(1, 0, 2, 3).to(run.device, torch.float32)
        _check_finite(rows, "the VAE decode", batch, _VAE_CAUSE)
        return rows

    reference = None
    if method != "none":
        reference = geo.reference(_read_frames(frames, f, f + 1, run.device))
        reference.mul_(2.0).sub_(1.0)  # `to_model_range` in place: the same values, one tensor fewer
    out = None
    for a, b, rows in color_correct_bands(content, lambda a, b: reference[..., a:b, :], oh, method,
                                          band_rows(ow, POST_TILE_PIXELS, method)):
        # the frame may still be blended when it is among the batch's first `overlap` or last `hold`
        piece, = split_for_crossfade(to_unit_range(rows), batch.overlap - f, hold - (batch.length - f - 1),
                                     run.output_dtype)
        if out is None:
            out = torch.empty((1, 3, oh, ow), dtype=piece.dtype)
        out[..., a:b, :] = piece
    return out
