"""`python -m seedvr2 INPUT -o OUTPUT`: upscale a video or an image with SeedVR2.

Same options as the ComfyUI upscaler node (seed, resolution, max_resolution, batch_size,
temporal_overlap, color_correction) plus model files, device, precision, block swap and VAE
tiling. Missing known model files download into --models-dir (default ./models/SEEDVR2) unless
--no-download. Video output keeps the input frame rate; PNG output keeps alpha.

Examples:
    python -m seedvr2 clip.mp4 -o clip_1080p.mp4 --resolution 1080 --batch-size 21 --temporal-overlap 2
    python -m seedvr2 photo.png -o photo_4k.png --resolution 2160 --blocks-to-swap 16 --vae-tile-size 512
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .color import COLOR_CORRECTIONS
from .loaders import DTYPES, LoadedDiT, load_dit_model, load_vae_model, upscale_models
from .models import DEFAULT_DIT, DEFAULT_VAE, ModelFileError
from .pipeline import TensorSink, UpscaleInputError, UpscaleModels, UpscaleSettings, VAETiling, upscale
from .pipeline.settings import validate_upscale_inputs
from .video_io import MediaError, VideoWriter, is_image_path, read_media, write_images

log = logging.getLogger("seedvr2")

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m seedvr2", description=__doc__.split("\n\n")[0],
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
    d.add_argument("--attention", choices=("sdpa", "flash_attn", "flash_emul"), default="sdpa",
                   help="DiT attention backend (default sdpa)")
    d.add_argument("--blocks-to-swap", type=int, default=0,
                   help="DiT blocks streamed from host memory for each use (CUDA only; default 0)")
    d.add_argument("--swap-io-components", action="store_true", help="also stream the DiT's input/output modules")
    d.add_argument("--prefetch-blocks", type=int, default=2, help="device slots swapped blocks load into ahead of use")
    d.add_argument("--pin-memory", choices=("auto", "on", "off"), default="auto", help="pin swapped blocks' host copies")
    d.add_argument("--swap-placement", choices=("first", "spread"), default="spread",
                   help="which blocks to swap: the first N, or N spread between resident ones (default)")
    d.add_argument("--vae-tile-size", type=int, default=512, help="VAE tile size in pixels, 0 = no tiling (default 512)")
    d.add_argument("--vae-tile-overlap", type=int, default=64, help="VAE tile overlap in pixels (default 64)")
    d.add_argument("--vae-chunk-frames", type=int, default=4,
                   help="frames per causal VAE chunk, multiple of 4, 0 = whole batch (default 4)")
    d.add_argument("--crf", type=int, default=17, help="video quality for H.264/VP9 output (default 17)")

    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


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
    try:
        return run(args)
    except (UpscaleInputError, CheckpointError, ModelFileError, MediaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as exc:
        print(f"error: out of memory ({str(exc).splitlines()[0]}). Try --blocks-to-swap (e.g. 16), a smaller "
              "--batch-size, a smaller --vae-tile-size, or a lower --resolution.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    settings = UpscaleSettings(
        resolution=args.resolution, max_resolution=args.max_resolution, batch_size=args.batch_size,
        temporal_overlap=args.temporal_overlap, color_correction=args.color_correction, seed=args.seed,
        official_area=args.official_area)
    output = args.output or _default_output(args.input)
    if output.exists() and not args.overwrite:
        raise MediaError(f"{output} exists; pass -y/--overwrite to replace it or choose another -o")
    frames, fps = read_media(args.input)
    geometry = validate_upscale_inputs(frames, settings)  # before any model is loaded
    log.info("%s: %d frame(s) %dx%d -> %dx%d", args.input, frames.shape[0], *geometry.input_hw, *geometry.output_hw)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models, dit = load_models(args, device)
    started = time.perf_counter()
    with ProgressBar(enabled=not args.quiet) as bar:
        if fps is None or is_image_path(output):
            sink = TensorSink(frames.shape[0], *geometry.output_hw, frames.shape[-1], torch.uint8)
            upscale(frames, models, settings, sink=sink, progress=bar.update)
            written = write_images(output, sink.result())
            where = written[0] if len(written) == 1 else f"{len(written)} images {written[0]} ..."
        else:
            with VideoWriter(output, fps, crf=args.crf) as writer:
                upscale(frames, models, settings, sink=writer, progress=bar.update)
            where = output
    if dit.block_swap is not None:
        log.info("block swap: %s", dit.block_swap.stats().summary())
    dit.release()
    log.info("wrote %s in %.1f s", where, time.perf_counter() - started)
    return 0


def load_models(args: argparse.Namespace, device: torch.device) -> tuple[UpscaleModels, LoadedDiT]:
    """Resolve, load and place the DiT and VAE (block swap places the DiT on CUDA)."""
    block_swap = None
    if device.type == "cuda" or args.blocks_to_swap or args.swap_io_components:
        block_swap = dict(blocks_to_swap=args.blocks_to_swap, swap_io_components=args.swap_io_components,
                          prefetch_blocks=args.prefetch_blocks, pin_memory=args.pin_memory,
                          placement=args.swap_placement)
    download = not args.no_download
    dit = load_dit_model(args.dit, args.models_dir, device=device, dtype=args.dtype, attention=args.attention,
                         block_swap=block_swap, download=download)
    tiling = VAETiling(args.vae_tile_size or None, args.vae_tile_overlap, args.vae_chunk_frames or None)
    vae = load_vae_model(args.vae, args.models_dir, device=device, dtype=args.dtype, tiling=tiling, download=download)
    return upscale_models(dit, vae), dit


def _default_output(path: Path) -> Path:
    suffix = path.suffix if is_image_path(path) else ".mp4"
    return path.with_name(f"{path.stem}_seedvr2{suffix}")


class ProgressBar:
    """Per-phase progress on stderr: tqdm when it is installed, else a plain one-line bar."""

    PHASES = {"encode": "VAE encode", "dit": "DiT", "decode": "VAE decode"}

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._tqdm = None
        self._bar = None
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
            if done == 0:
                self._close_bar()
                self._bar = self._tqdm(total=total, desc=label, unit="batch", file=sys.stderr)
            elif self._bar is not None:
                self._bar.update(done - self._bar.n)
            return
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done == total else ""
        print(f"\r{label:>10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches", end=end,
              file=sys.stderr, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self._close_bar()
