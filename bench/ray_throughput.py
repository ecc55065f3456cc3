"""Throughput of Ray workers vs one process, and the bytes each batch moves (CPU, tiny models).

A local Ray cluster with `--cpus` CPUs (default 2: be honest about the box), each worker and the
driver at 1 torch thread. The worker pool is started (models loaded) before timing, so the times
are the steady state a long video sees; startup is printed separately. Bytes per batch are the
tensor payloads: to a worker (its input frames, uint8; plus the stored x0 on a resume) and back
(x0 float32 + the output before the crossfade: float32 where it blends, the sink dtype elsewhere).

    python bench/ray_throughput.py                      # 41 frames 32x48 -> 64 short side, 1 vs 2 workers
    python bench/ray_throughput.py --frames 121 --resolution 256 --input 128x192
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402

from seedvr2.distributed import ModelSpec  # noqa: E402
from seedvr2.distributed.ray_run import RayRunStats, RayWorkers, init_local_ray, upscale_on_ray  # noqa: E402
from seedvr2.pipeline import UpscaleSettings, VAETiling, upscale  # noqa: E402
from tiny_models import DIT_FILE, VAE_FILE, write_tiny_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--input", default="32x48", help="input HxW")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--overlap", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2))
    args = parser.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.input.split("x"))
    frames = torch.randint(0, 256, (args.frames, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    settings = UpscaleSettings(resolution=args.resolution, batch_size=args.batch_size, temporal_overlap=args.overlap)
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_models(Path(tmp))
        spec = ModelSpec(DIT_FILE, VAE_FILE, tmp, vae_tiling=VAETiling(None, 64, 4), download=False)
        models, _ = spec.load("cpu")
        upscale(frames[: 2 * args.batch_size], models, settings)  # warm-up, as the workers get
        t0 = time.perf_counter()
        reference = upscale(frames, models, settings, output_dtype=torch.uint8)
        single = time.perf_counter() - t0
        batches = -(-max(args.frames - args.overlap, 1) // (args.batch_size - args.overlap))
        print(f"{args.frames} frames {w}x{h} -> {reference.shape[2]}x{reference.shape[1]}, batch {args.batch_size} "
              f"overlap {args.overlap} (~{batches} batches), {args.cpus} CPUs, 1 torch thread per process")
        print(f"one process:      {single:6.2f} s  {args.frames / single:6.2f} frames/s")
        t0 = time.perf_counter()
        init_local_ray(num_cpus=args.cpus)
        print(f"ray.init:         {time.perf_counter() - t0:6.2f} s")
        for n in args.workers:
            t0 = time.perf_counter()
            with RayWorkers(spec, n, device="cpu") as pool:
                start = time.perf_counter() - t0
                upscale_on_ray(frames[: 2 * args.batch_size], spec, settings, workers=pool)  # warm-up
                stats = RayRunStats()
                t0 = time.perf_counter()
                out = upscale_on_ray(frames, spec, settings, output_dtype=torch.uint8, workers=pool, stats=stats)
                took = time.perf_counter() - t0
            assert torch.equal(out, reference), "Ray output differs from the single-process output"
            print(f"{n} worker(s):      {took:6.2f} s  {args.frames / took:6.2f} frames/s  (x{single / took:.2f} vs one "
                  f"process; workers started in {start:.1f} s); bitwise equal")
            to, back = statistics.mean(stats.bytes_to_workers), statistics.mean(stats.bytes_from_workers)
            print(f"   bytes per batch: to a worker {to:,.0f}, back {back:,.0f} ({len(stats.computed)} batches)")
        t0 = time.perf_counter()
        upscale(frames, models, settings, output_dtype=torch.uint8)
        print(f"one process again: {time.perf_counter() - t0:6.2f} s (the box is shared: compare the two)")


if __name__ == "__main__":
    main()
