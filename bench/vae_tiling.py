"""Peak memory and time of VAE decode, untiled vs tiled, at two frame sizes (real channel sizes).

The decoder is the released SeedVR2 one (block_out_channels 128/256/512/512, 150.6 M params) with
random weights, so activation sizes are the real ones. Both variants use the official temporal
chunking; "untiled" is ``tile_size=None``. Every scenario runs in a fresh subprocess on CPU, so its
peak RSS (``ru_maxrss``) is its own; on CUDA one process measures ``max_memory_allocated``.
"Working" memory is the peak minus what was resident before the decode (weights, input).

    python bench/vae_tiling.py                        # CPU, fp32, 256^2 and 512^2, tile 288, 1 frame
    python bench/vae_tiling.py --device cuda           # bf16, peak VRAM, same sizes, 5 frames
    python bench/vae_tiling.py --device cuda --sizes 512 1024 --tile 512 --cache-device cpu
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seedvr2.vae import DEFAULT_TILE_OVERLAP, build_vae  # noqa: E402
from seedvr2.vae.tiling import split_axis  # noqa: E402

GIB = 1024 ** 3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_decoder(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The real decoder with random weights (N(0, 1/fan_in) convs/linears, as the golden fixtures
    initialise), allocated directly on the device; the encoder is never materialised."""
    decoder = build_vae("default", device="meta").decoder.to_empty(device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                values = torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel())
            elif "norm" in name and name.endswith("weight"):
                values = 1 + 0.2 * torch.randn(p.shape, generator=gen)
            else:
                values = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(values)
    return decoder.to(dtype)


def run_scenario(args: argparse.Namespace) -> dict:
    """Decode one (size, tiled?) scenario in this process and measure it."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    vae = build_vae("default", device="meta")
    vae.decoder = random_decoder(device, dtype)
    latent = args.size // 8
    z = torch.randn(1, 16, args.latent_frames, latent, latent, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    tile = args.tile if args.tiled else None
    kwargs = dict(tile_size=tile, tile_overlap=args.overlap, chunk_frames=args.chunk_frames,
                  cache_device=args.cache_device)
    if device.type == "cuda":
        vae.decode(z[:, :, :1, :8, :8], **kwargs)  # warm-up: cuDNN algorithm selection
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss()
    start = time.perf_counter()
    out = vae.decode(z, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss()
    return {"size": args.size, "tiled": args.tiled, "seconds": seconds, "before": before, "peak": peak,
            "output_bytes": out.numel() * out.element_size(), "frames": out.shape[2]}


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def tile_layout(size: int, tile: int, overlap: int) -> tuple[int, int, float]:
    """(tiles per side, largest tile px, computed/frame pixel ratio) of the tiled decode."""
    spans = split_axis(size // 8, tile // 8, math.ceil(overlap / 8))
    per_side = sum(s.stop - s.start for s in spans) / (size // 8)
    return len(spans), 8 * max(s.stop - s.start for s in spans), per_side ** 2


def measure(args: argparse.Namespace, size: int, tiled: bool) -> dict:
    if args.device == "cuda":
        return run_scenario(argparse.Namespace(**{**vars(args), "size": size, "tiled": tiled}))
    cmd = [sys.executable, __file__, "--worker", "--size", str(size), "--device", args.device, "--dtype", args.dtype,
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--latent-frames", str(args.latent_frames),
           "--chunk-frames", str(args.chunk_frames)] + (["--tiled"] if tiled else [])
    if args.cache_device:
        cmd += ["--cache-device", args.cache_device]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[256, 512], help="two square output frame sizes, px")
    parser.add_argument("--tile", type=int, default=288, help="tile_size, output px (288: 512 px splits into 2x2)")
    parser.add_argument("--overlap", type=int, default=DEFAULT_TILE_OVERLAP, help="tile_overlap, output px")
    parser.add_argument("--latent-frames", type=int, help="latent frames (default 2 -> 5 output frames, a full "
                        "4-frame chunk after the first frame; on CPU 1 -> a single frame, to keep the run to minutes)")
    parser.add_argument("--chunk-frames", type=int, default=4, help="output frames per temporal chunk")
    parser.add_argument("--cache-device", help="where the causal state between chunks lives (default: compute device)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.latent_frames = args.latent_frames or (2 if args.device == "cuda" else 1)
    if args.worker:
        print(json.dumps(run_scenario(args)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available in this torch build / machine")

    memory = "peak VRAM" if args.device == "cuda" else "peak RSS"
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"SeedVR2 VAE decode, real channels, random weights | {name}, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"latent frames {args.latent_frames} -> {4 * (args.latent_frames - 1) + 1} output frames, chunk "
          f"{args.chunk_frames} frames, causal state on {args.cache_device or 'the compute device'} | tiled: tile "
          f"{args.tile} px, overlap {args.overlap} px")
    print(f"{memory} in GiB as total (working = total minus weights and input before the decode)")
    header = (f"{'frame':>9} | {'untiled total':>13} {'working':>8} | {'tiles':>5} {'tile px':>7} {'tiled total':>11} "
              f"{'working':>8} | {'untiled s':>9} {'tiled s':>8} {'ratio':>6} {'px ratio':>8}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        plain, tiled = measure(args, size, False), measure(args, size, True)
        per_side, tile_px, px_ratio = tile_layout(size, args.tile, args.overlap)
        print(f"{size:>4}x{size:<4} | {plain['peak'] / GIB:>13.2f} {(plain['peak'] - plain['before']) / GIB:>8.2f} | "
              f"{per_side}x{per_side:<3} {tile_px:>7} {tiled['peak'] / GIB:>11.2f} "
              f"{(tiled['peak'] - tiled['before']) / GIB:>8.2f} | {plain['seconds']:>9.2f} {tiled['seconds']:>8.2f} "
              f"{tiled['seconds'] / plain['seconds']:>6.2f} {px_ratio:>8.2f}")
    print("ratio = tiled / untiled time; px ratio = pixels computed by the tiles / frame pixels (the geometric cost "
          "of the overlaps)")


if __name__ == "__main__":
    main()
