"""`seedvr2 INPUT -o OUTPUT` (or `python -m seedvr2`): upscale a video or an image with SeedVR2.

Same options as the ComfyUI upscaler node (seed, resolution, max_resolution, batch_size,
temporal_overlap, color_correction) plus model files, device, precision, block swap and VAE
tiling; block swap and VAE tiles default to "auto" (planned for the free GPU memory, or
--vram-budget). Missing known model files download into --models-dir (default ./models/SEEDVR2) unless
--no-download; every missing file is reported at once, before anything large loads. Video output
keeps the input frame rate and has even sides (4:2:0; --exact-size keeps an odd size); PNG output
keeps alpha. Outputs are checked before any work and written to a temporary file beside the
target, renamed into place only when the run succeeds; an input is never overwritten.

Examples:
    seedvr2 clip.mp4 -o clip_1080p.mp4 --resolution 1080 --batch-size 21 --temporal-overlap 2
    seedvr2 clip.mp4 -o clip_1080p.mp4 --vram-budget 10   # leave the rest of the GPU to other work
    seedvr2 photo.png -o photo_4k.png --resolution 2160 --blocks-to-swap 16 --vae-tile-size 512
    seedvr2 long.mp4 -o long_4k.mp4 --resolution 2160 --batch-size 21 --compile   # long runs: compile pays
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .color import COLOR_CORRECTIONS
from .batching import plan_batches
from .distributed.spec import ModelSpec
from .loaders import DTYPES, LoadedDiT, compute_dtype, load_dit_model, load_vae_model, upscale_models
from .models import DEFAULT_DIT, DEFAULT_VAE, ModelFileError, preflight
from .outputs import AtomicOutputs, OutputPlan, _same_file, plan_outputs
from .pipeline import (NonFiniteOutputError, UpscaleInputError, UpscaleModels, UpscaleSettings, VAETiling, check_host_memory,
                       host_memory_needed, upscale)
from .pipeline.output import ThreadedSink
from .pipeline.run import plan_windows, validate_source, window_estimate, wxh
from .pipeline.store import ResumeError, ResumeStore
from .pipeline.stream import TensorSource
from .preprocess import plan_geometry
from .speed import SpeedOptions, compile_unavailable
from .video_io import (DEFAULT_CRF, ImageFilesSink, MediaError, VideoWriter, check_crf, is_image_path, is_video_path,
                       open_media)

log = logging.getLogger("seedvr2")
AUTO = "auto"


def program_name(argv0: str | None = None) -> str:
    """The name the user invoked: `seedvr2` for the console script, `python -m seedvr2` for the module."""
    name = Path(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "")).name
    return "python -m seedvr2" if name in ("", "__main__.py", "-c", "-m") else name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or program_name(), description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("Examples:")[1].join(["Examples:", ""]))
    p.add_argument("input", type=Path, help="video (any format PyAV reads) or image (.png, .jpg, .webp, ...)")
    p.add_argument("-o", "--output", type=Path,
                   help="output file (default: INPUT_seedvr2.png for images, .mp4 for videos)")
    p.add_argument("-y", "--overwrite", action="store_true", help="replace OUTPUT if it exists")

    up = p.add_argument_group("upscale (as the ComfyUI node)")
    up.add_argument("--seed", type=int, default=0, help="noise seed (default 0); same seed, same output")
    up.add_argument("--resolution", type=int, default=1080, help="output short side in pixels (default 1080)")
    up.add_argument("--max-resolution", type=int, default=0, help="cap on the output long side, 0 = none")
    up.add_argument("--batch-size", type=int, default=5,
                    help="frames per model call, 4n+1 (default 5); larger = steadier video, more memory")
    up.add_argument("--temporal-overlap", type=int, default=0,
                    help="frames shared and crossfaded between consecutive batches (default 0)")
    up.add_argument("--color-correction", choices=COLOR_CORRECTIONS, default="wavelet",
                    help="colour correction against the input (default wavelet, as the official code)")
    up.add_argument("--official-area", metavar="HxW", type=_parse_area,
                    help="official resize instead of --resolution: scale to about H*W pixels, crop to multiples of 16")

    m = p.add_argument_group("models")
    m.add_argument("--dit", default=DEFAULT_DIT, help=f"DiT file name in --models-dir, or a path (default {DEFAULT_DIT})")
    m.add_argument("--vae", default=DEFAULT_VAE, help=f"VAE file name or path (default {DEFAULT_VAE})")
    m.add_argument("--models-dir", type=Path, default=Path("models/SEEDVR2"),
                   help="where model files are found and downloaded (default ./models/SEEDVR2)")
    m.add_argument("--no-download", action="store_true", help="never download; fail if a model file is missing")

    d = p.add_argument_group("device and memory")
    d.add_argument("--device", default=None, help="compute device (default: cuda if available, else cpu)")
    d.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                   help="compute dtype (default auto: bf16 on CUDA, fp16 on GPUs without bf16, fp32 on CPU)")
    d.add_argument("--attention", choices=("auto", "sdpa", "flash_attn", "flash_emul"), default="auto",
                   help="DiT attention backend (default auto: flash_attn on CUDA when installed, else sdpa)")
    d.add_argument("--blocks-to-swap", type=_auto_or_count, default=AUTO, metavar="auto|N",
                   help="DiT blocks streamed from host memory for each use (CUDA only; default auto: planned for "
                        "the free GPU memory, see --vram-budget; 0 = none)")
    d.add_argument("--vram-budget", type=_gib, default=None, metavar="GB",
                   help="GPU memory (GiB) the auto plan may use, to leave room for other work (default: the free "
                        "memory)")
    d.add_argument("--swap-io-components", action="store_true", help="also stream the DiT's input/output modules")
    d.add_argument("--prefetch-blocks", type=int, default=2, help="device slots swapped blocks load into ahead of use")
    d.add_argument("--pin-memory", choices=("auto", "on", "off"), default="auto", help="pin swapped blocks' host copies")
    d.add_argument("--swap-placement", choices=("first", "spread"), default="spread",
                   help="which blocks to swap: the first N, or N spread between resident ones (default)")
    d.add_argument("--vae-tile-size", type=_auto_or_count, default=AUTO, metavar="auto|N",
                   help="VAE tile size in pixels, 0 = whole frames (default auto: the largest that fits beside the "
                        "DiT plan on CUDA, 512 elsewhere)")
    d.add_argument("--vae-tile-overlap", type=int, default=64, help="VAE tile overlap in pixels (default 64)")
    d.add_argument("--vae-chunk-frames", type=int, default=4,
                   help="frames per causal VAE chunk, multiple of 4, 0 = whole batch (default 4)")
    d.add_argument("--crf", type=int, default=DEFAULT_CRF,
                   help=f"video quality, lower = better: 0-51 for H.264 (.mp4/.mkv/.mov), 0-63 for VP9 (.webm) "
                        f"(default {DEFAULT_CRF})")
    d.add_argument("--exact-size", action="store_true",
                   help="video output: keep the exact planned size even with an odd side (written as 4:4:4, which "
                        "many players cannot play); by default odd sides are rounded to even (4:2:0)")

    sp = p.add_argument_group("speed (numbers equal eager within rounding)")
    sp.add_argument("--compile", action="store_true",
                    help="torch.compile the DiT blocks (works with block swap; pays on long runs, the first batch "
                         "waits for the compile; needs Triton on CUDA, a C++ compiler on CPU)")
    sp.add_argument("--channels-last", action="store_true",
                    help="VAE 3-D convolutions in channels-last-3d memory format (for CUDA GPUs with tensor cores; "
                         "slower on CPU)")
    sp.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                    help="no cuDNN autotuning of the VAE convolutions (on by default on CUDA: the first tile of "
                         "each size is tuned once)")

    lv = p.add_argument_group("long videos, resume and several GPUs")
    lv.add_argument("--resume", type=Path, metavar="DIR",
                    help="keep finished batches in DIR (created if missing) and skip those already there, so an "
                         "interrupted run restarts where it stopped; refused if DIR holds another input or settings")
    lv.add_argument("--window-batches", type=_auto_or_count, default=AUTO, metavar="auto|N",
                    help="batches run phase by phase (all encodes, all DiT calls, all decodes) before the next "
                         "group: bounds host memory on long videos (default auto: what fits in 1 GiB)")
    lv.add_argument("--workers", type=int, default=0, metavar="N",
                    help="run on N Ray workers (one per GPU when there are GPUs, CPU workers otherwise) on a local "
                         "Ray cluster started for this run; needs pip install \".[ray]\"")
    lv.add_argument("--ray-address", metavar="ADDR",
                    help="join the Ray cluster at ADDR (e.g. 10.0.0.5:6379 or auto) instead of starting one; with "
                         "--workers N uses N workers, else one per GPU of the cluster")

    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _auto_or_count(text: str) -> int | str:
    """"auto" or a whole number >= 0 (argparse prefixes its error with the option's name)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 0, got {value}")
    return value


def _gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GiB as a number such as 10 or 7.5, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected GiB greater than 0, got {text!r}")
    return value


def _parse_area(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 720x1280, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    with _sigterm_as_exit():
        try:
            return run(args)
        except (UpscaleInputError, CheckpointError, ModelFileError, MediaError, NonFiniteOutputError, ResumeError,
                ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except torch.OutOfMemoryError as exc:
            print(f"error: out of memory ({str(exc).splitlines()[0]}). The memory plan and its out-of-memory "
                  "fallback (all DiT blocks swapped, the smallest VAE tiles) could not fit this run on the GPU: "
                  "lower --batch-size or --resolution, free GPU memory used by other programs (or raise "
                  "--vram-budget if you set it), or use a smaller or fp8 --dit.", file=sys.stderr)
            return 3
        except OSError as exc:  # disk full, permissions, ... while reading or writing
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM ends the run like Ctrl-C does (cleanup runs: no temporary output is left behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    distributed = bool(args.workers) or args.ray_address is not None
    if args.workers < 0:
        raise UpscaleInputError(f"--workers must be 0 (this process) or a number of Ray workers >= 1, got {args.workers}")
    if distributed:
        from .distributed import check_ray

        check_ray()  # before any work: the install hint at once
    device = resolve_device(args.device) if not distributed or args.device else None
    check_speed_switches(args, device)
    settings = UpscaleSettings(
        resolution=args.resolution, max_resolution=args.max_resolution, batch_size=args.batch_size,
        temporal_overlap=args.temporal_overlap, color_correction=args.color_correction, seed=args.seed,
        official_area=args.official_area)
    output = args.output or _default_output(args.input)
    input_is_video = not is_image_path(args.input)
    # Everything about the output is checked before the input is read and before any model loads.
    plan_outputs(args.input, output, frames=None, input_is_video=input_is_video, overwrite=args.overwrite)
    if is_video_path(output):
        check_crf(args.crf, output, option="--crf")
    store = ResumeStore(args.resume) if args.resume is not None else None  # folder checked before the input is read
    if store is not None and _same_file(Path(output).parent, store.path):
        raise UpscaleInputError(f"-o {output} is inside --resume {args.resume}, a folder that holds only the run's "
                                "batches; write the output elsewhere (choose another -o)")
    source, fps = open_media(args.input)
    with contextlib.closing(source) if hasattr(source, "close") else contextlib.nullcontext():
        return _run_source(args, source, fps, output, settings, device, store, distributed)


def _run_source(args: argparse.Namespace, source, fps, output: Path, settings: UpscaleSettings,
                device: torch.device | None, store: ResumeStore | None, distributed: bool) -> int:
    num_frames = source.shape[0]
    plan = plan_outputs(args.input, output, frames=num_frames, input_is_video=fps is not None,
                        overwrite=args.overwrite)
    settings = _video_settings(source.shape, settings, plan, args.exact_size)
    geometry = validate_source(source, settings)
    log.info("%s: %d frame(s) %s -> %s", args.input, num_frames, wxh(geometry.input_hw), wxh(geometry.output_hw))
    spec = model_spec(args)
    window = None if args.window_batches == AUTO else args.window_batches
    if window == 0:
        raise UpscaleInputError("--window-batches must be auto or a number of batches >= 1, got 0")
    if not distributed:
        _check_memory(source, geometry, settings, plan, device, args, window)
    preflight(args.dit, args.vae, args.models_dir, download=not args.no_download)  # all missing files in one go
    if store is not None:
        store = ResumeStore(store.path, spec.identity(device.type if device is not None else None))  # the pipeline adds the input and the settings
    started = time.perf_counter()
    dit = None
    with AtomicOutputs(plan) as files, ProgressBar(enabled=not args.quiet) as bar:
        with _sink(plan, files, fps, args, num_frames, geometry, source.shape[-1]) as sink:
            if distributed:
                from .distributed import upscale_on_ray

                upscale_on_ray(source, spec, settings, sink=sink, workers=args.workers or None,
                               address=args.ray_address, device=args.device, resume=store, progress=bar.update)
            else:
                models, dit = load_models(args, device)
                upscale(source, models, settings, sink=sink, progress=bar.update, window=window, resume=store)
        written = files.commit()
    where = written[0] if len(written) == 1 else f"{len(written)} images {written[0]} ..."
    if dit is not None:
        if dit.block_swap is not None:
            log.info("block swap: %s", dit.block_swap.stats().summary())
        dit.release()
    log.info("wrote %s in %.1f s", where, time.perf_counter() - started)
    return 0


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The models and their placement options, as every process (this one, or Ray workers) loads them."""
    block_swap = dict(blocks_to_swap=args.blocks_to_swap, swap_io_components=args.swap_io_components,
                      prefetch_blocks=args.prefetch_blocks, pin_memory=args.pin_memory,
                      placement=args.swap_placement, vram_budget=args.vram_budget)
    tiling = VAETiling(args.vae_tile_size or None, args.vae_tile_overlap, args.vae_chunk_frames or None)  # 0 -> whole
    return ModelSpec(args.dit, args.vae, str(args.models_dir), dtype=args.dtype, attention=args.attention,
                     block_swap=block_swap, vae_tiling=tiling, download=not args.no_download,
                     speed=speed_options(args))


def speed_options(args: argparse.Namespace) -> SpeedOptions:
    """The speed switches (--compile, --channels-last, --no-cudnn-benchmark) -> `SpeedOptions`."""
    return SpeedOptions.from_switches(compile=args.compile, channels_last=args.channels_last,
                                      cudnn_benchmark=args.cudnn_benchmark)


def check_speed_switches(args: argparse.Namespace, device: torch.device | None) -> None:
    """Refuse, before the input is read, a speed switch that cannot run on `device` (None: Ray
    workers pick their own device, and check nothing here); warn about one that does not pay."""
    if device is None:
        return
    if args.compile:
        reason = compile_unavailable(device)
        if reason is not None:
            raise UpscaleInputError(f"--compile on {device}: {reason}; or run without --compile")
    if args.channels_last and device.type != "cuda":
        log.warning("--channels-last on %s: it runs, but is slower than the default layout off CUDA (it is "
                    "meant for CUDA GPUs)", device)


def load_models(args: argparse.Namespace, device: torch.device) -> tuple[UpscaleModels, LoadedDiT]:
    """Resolve, load and place the DiT and VAE (block swap places the DiT on CUDA), as `model_spec` says."""
    return model_spec(args).load(device, loaders=(load_dit_model, load_vae_model, upscale_models))


@contextlib.contextmanager
def _sink(plan: OutputPlan, files: AtomicOutputs, fps, args: argparse.Namespace, num_frames: int, geometry,
          channels: int):
    """Where frames go as they are final: the video encoder, or one image file per frame (temporary names)."""
    if plan.video:
        with VideoWriter(files.temp, fps, crf=args.crf, label=plan.path) as writer, ThreadedSink(writer) as sink:
            yield sink  # encoding overlaps the GPU
    else:
        yield ImageFilesSink(plan.path, files.temps)


def resolve_device(name: str | None) -> torch.device:
    """--device -> a usable torch.device, or UpscaleInputError saying why not and what to do.

    Tells a torch build without CUDA from a machine where no CUDA GPU is visible.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UpscaleInputError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N (N = GPU index) or mps")
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise UpscaleInputError(
                f"--device {name}: this torch build has no CUDA (torch {torch.__version__}); install a CUDA build "
                "of PyTorch (https://pytorch.org/get-started/locally/) or use --device cpu")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UpscaleInputError(
                f"--device {name}: no CUDA GPU is visible on this machine (torch {torch.__version__} has CUDA "
                f"{torch.version.cuda or torch.version.hip}); check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, "
                "or use --device cpu")
        if device.index is not None and device.index >= count:
            raise UpscaleInputError(f"--device {name}: only {count} CUDA GPU(s) are visible (cuda:0 .. cuda:{count - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UpscaleInputError(f"--device {name}: no Apple GPU (MPS) is available here; use --device cpu")
    elif device.type != "cpu":
        raise UpscaleInputError(f"--device {name}: {device.type} devices are not supported; use cpu, cuda[:N] or mps")
    return device


def _video_settings(shape: tuple[int, ...], settings: UpscaleSettings, plan: OutputPlan,
                    exact_size: bool) -> UpscaleSettings:
    """Video output gets even sides (4:2:0, what players expect) unless --exact-size; the change is logged."""
    if not plan.video or exact_size or settings.official_area is not None:
        return settings
    even = dataclasses.replace(settings, even_size=True)
    _, h, w, _ = shape
    try:
        exact_hw = plan_geometry(h, w, settings.resize_rule).output_hw
        even_hw = plan_geometry(h, w, even.resize_rule).output_hw
    except ValueError:
        return settings  # validate_upscale_inputs reports it
    if exact_hw != even_hw:
        log.info("video output %s -> %s: even sides for 4:2:0 video (yuv420p), which every player plays "
                 "(--exact-size keeps %s, written as 4:4:4)", wxh(exact_hw), wxh(even_hw), wxh(exact_hw))
    return even


def _check_memory(source, geometry, settings: UpscaleSettings, plan: OutputPlan, device: torch.device,
                  args: argparse.Namespace, window: int | None) -> None:
    """Refuse, before any model loads, a run whose window of batches cannot fit in host memory."""
    vae_dtype = compute_dtype(args.dtype, device)
    num_frames, channels = source.shape[0], source.shape[-1]
    estimate = host_memory_needed(
        num_frames, channels, geometry, settings, output_dtype=None,
        vae_itemsize=torch.empty((), dtype=vae_dtype).element_size(),
        canvas_on_host=bool(args.vae_tile_size) or device.type == "cpu")
    batches = plan_batches(num_frames, settings.batch_size, settings.temporal_overlap)
    windows = plan_windows(batches, geometry, channels, lazy=not isinstance(source, TensorSource), window=window)
    check_host_memory(window_estimate(estimate, windows, geometry), geometry, settings, num_frames)


def _default_output(path: Path) -> Path:
    suffix = path.suffix if is_image_path(path) else ".mp4"
    return path.with_name(f"{path.stem}_seedvr2{suffix}")


class ProgressBar:
    """Per-phase progress on stderr: tqdm when it is installed, else a plain one-line bar.

    While the bar is open, log records go through it (`write_line`): the bar is cleared, the
    record printed on a line of its own, the bar redrawn, so a log line and a bar never share a
    line of the terminal.
    """

    PHASES = {"encode": "VAE encode", "dit": "DiT", "decode": "VAE decode"}

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._tqdm = None
        self._bar = None
        self._bar_phase: str | None = None
        self._open_line: str | None = None  # the plain bar's text while its line is unfinished
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []
        if enabled:
            try:
                from tqdm import tqdm
                self._tqdm = tqdm
            except ImportError:
                pass

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        label = self.PHASES.get(phase, phase)
        if self._tqdm is not None:
            if done == 0 or self._bar is None or self._bar_phase != phase:  # a new phase (or window of batches)
                self._close_bar()
                self._bar = self._tqdm(total=total, initial=done, desc=label, unit="batch", file=sys.stderr)
                self._bar_phase = phase
            else:
                self._bar.update(done - self._bar.n)
            return
        width = 30
        filled = width * done // max(total, 1)
        text = f"{label:>10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches"
        self._open_line = None if done == total else text
        print(f"\r{text}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    def write_line(self, text: str) -> None:
        """Print one log line above the bar."""
        if self._tqdm is not None and self._bar is not None:
            self._tqdm.write(text, file=sys.stderr)
            return
        if self._open_line is not None:
            sys.stderr.write("\r" + " " * len(self._open_line) + "\r" + text + "\n\r" + self._open_line)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._open_line is not None:
            sys.stderr.write("\n")
            self._open_line = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            root = logging.getLogger()
            for handler in list(root.handlers):
                if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__):
                    through_bar = _ThroughBar(self, handler)
                    root.removeHandler(handler)
                    root.addHandler(through_bar)
                    self._swapped.append((handler, through_bar))
        return self

    def __exit__(self, *exc) -> None:
        self._close_bar()
        root = logging.getLogger()
        for handler, through_bar in self._swapped:
            root.removeHandler(through_bar)
            root.addHandler(handler)
        self._swapped.clear()


class _ThroughBar(logging.Handler):
    """Formats records like the handler it stands in for, and prints them via the progress bar."""

    def __init__(self, bar: ProgressBar, original: logging.Handler):
        super().__init__(original.level)
        self.bar, self.original = bar, original
        self.setFormatter(original.formatter)
        for f in original.filters:
            self.addFilter(f)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.bar.write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)
