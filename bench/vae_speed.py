"""VAE encode + decode time of the fast paths side by side with the reference, in one process.

The real SeedVR2 VAE (250.6 M params) with random weights; variants run interleaved (A B C A B C
...) so a shared or throttling machine slows them alike; each time is the median over repeats, the
ratio is against ``reference``. Variants:

* ``reference``: the data flow before the copy-free causal padding (tests/speed_reference.py),
  every speed option off (`SpeedOptions.eager()`);
* ``eager``: the current data flow, every speed option off;
* ``default``: ``SpeedOptions()`` (cuDNN autotuning on CUDA);
* ``channels_last``: default + channels-last-3d convs;
* ``tile_batch``: default + ``--tile-batch`` tiles per call (needs ``--tile`` smaller than the frame);
* ``fast``: channels_last + tile_batch;
* ``compile``: default + ``vae_compile`` (inductor-compiled norm -> SiLU -> time-pad steps). Its
  first call compiles: the table shows steady state (after ``--warmup``, at least 1 for this
  variant), and the first call's encode + decode seconds are printed separately (``first_s``).

Every variant's output is compared with the first variant's (max abs diff).

``--sink-overlap``: instead, the whole upscale with the tiny test models writing an H.264 video,
directly vs through `ThreadedSink` (encoding on a worker thread), interleaved; prints both times
and how much of the encoding time the thread hid.

    python bench/vae_speed.py                                   # CPU fp32, 5 frames 128^2
    python bench/vae_speed.py --device cuda --dtype bf16 --frames 17 --size 512 --tile 256 --repeats 5
    python bench/vae_speed.py --sink-overlap --frames 41 --size 256
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from seedvr2.speed import SpeedOptions, apply_speed  # noqa: E402
from seedvr2.vae import build_vae  # noqa: E402
from speed_reference import legacy_vae  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("reference", "eager", "default", "channels_last", "tile_batch", "fast", "compile")


def random_vae(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The released VAE layout, N(0, 1/fan_in) weights (as the golden fixtures), on ``device``."""
    vae = build_vae("default", device="meta").to_empty(device=device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return vae.to(dtype)


def options_for(variant: str, tile_batch: int) -> SpeedOptions:
    if variant in ("reference", "eager"):
        return SpeedOptions.eager()
    return SpeedOptions(channels_last=variant in ("channels_last", "fast"),
                        tile_batch=tile_batch if variant in ("tile_batch", "fast") else 1,
                        vae_compile=variant == "compile")


def run_once(vae, x, variant: str, args) -> tuple[float, float, torch.Tensor]:
    apply_speed(options_for(variant, args.tile_batch), vae=vae)
    kw = dict(tile_size=args.tile or None, tile_overlap=args.overlap, chunk_frames=args.chunk_frames)
    scope = legacy_vae() if variant == "reference" else contextlib.nullcontext()
    with scope:
        _sync(x.device)
        t0 = time.perf_counter()
        z = vae.encode(x, **kw).mean
        _sync(x.device)
        t1 = time.perf_counter()
        y = vae.decode(z, **kw)
        _sync(x.device)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, y.float().cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sink_overlap(args) -> None:
    """Upscale with the tiny models into a video: direct writer vs ThreadedSink, and the encode time alone."""
    import tempfile
    from fractions import Fraction

    from seedvr2.pipeline import UpscaleModels, UpscaleSettings, VAETiling, upscale
    from seedvr2.pipeline.output import ThreadedSink
    from seedvr2.models import resolve_models
    from seedvr2.dit import load_dit
    from seedvr2.text_embeds import load_pos_emb
    from seedvr2.vae import load_vae
    from seedvr2.video_io import VideoWriter
    from tiny_models import write_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        written = write_tiny_models(Path(tmp) / "models")
        paths = resolve_models(written.dit.name, written.vae.name, Path(tmp) / "models", download=False)
        models = UpscaleModels(load_dit(paths.dit.path, compute_dtype=torch.float32),
                               load_vae(paths.vae.path, dtype=torch.float32), load_pos_emb(paths.pos_emb), "cpu",
                               vae_tiling=VAETiling(tile_size=None, tile_overlap=0, chunk_frames=4))
        frames = torch.rand(args.frames, args.size // 2, args.size // 2, 3, generator=torch.Generator().manual_seed(0))
        settings = UpscaleSettings(resolution=args.size, batch_size=5)

        def run(threaded: bool) -> float:
            t0 = time.perf_counter()
            with VideoWriter(Path(tmp) / "out.mp4", Fraction(24)) as writer:
                sink = ThreadedSink(writer) if threaded else writer
                with sink if threaded else contextlib.nullcontext():
                    upscale(frames, models, settings, sink=sink)
            return time.perf_counter() - t0

        def encode_only() -> float:
            out = (torch.rand(args.frames, args.size, args.size, 3) * 255).to(torch.uint8)
            t0 = time.perf_counter()
            with VideoWriter(Path(tmp) / "enc.mp4", Fraction(24)) as writer:
                for start in range(0, args.frames, 5):
                    writer.write(start, out[start:start + 5])
            return time.perf_counter() - t0

        run(False)  # warm-up
        times = {"direct": [], "threaded": [], "encode only": []}
        for _ in range(args.repeats):
            times["direct"].append(run(False))
            times["threaded"].append(run(True))
            times["encode only"].append(encode_only())
    med = {k: statistics.median(v) for k, v in times.items()}
    hidden = (med["direct"] - med["threaded"]) / med["encode only"] if med["encode only"] else float("nan")
    print(f"tiny models, {args.frames} frames -> {args.size}px video, {args.repeats} repeats, "
          f"threads={torch.get_num_threads()}")
    for k, v in med.items():
        print(f"{k:<12}{v:>8.2f} s")
    print(f"speedup {med['direct'] / med['threaded']:.2f}x; encoding hidden: {100 * hidden:.0f} %")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--size", type=int, default=128, help="square input frame side in pixels")
    p.add_argument("--tile", type=int, default=0, help="VAE tile size in pixels (0 = whole frames)")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--chunk-frames", type=int, default=4)
    p.add_argument("--tile-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0, help="untimed runs per variant first (cuDNN autotuning)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["reference", "eager"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--sink-overlap", action="store_true", help="measure ThreadedSink instead (see above)")
    args = p.parse_args()
    if args.sink_overlap:
        sink_overlap(args)
        return
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    vae = random_vae(device, dtype)
    x = (torch.rand(1, 3, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
         ).to(device, dtype)
    first = {}
    for variant in args.variants:
        # compiling happens in the first call: time it, and always warm `compile` up once
        for i in range(max(args.warmup, 1 if variant == "compile" else 0)):
            enc, dec, _ = run_once(vae, x, variant, args)
            if i == 0:
                first[variant] = enc + dec
    times = {v: [] for v in args.variants}
    outputs = {}
    for _ in range(args.repeats):
        for variant in args.variants:
            enc, dec, y = run_once(vae, x, variant, args)
            times[variant].append((enc, dec))
            outputs[variant] = y
    base = args.variants[0]
    rows = []
    for variant in args.variants:
        enc = statistics.median(t[0] for t in times[variant])
        dec = statistics.median(t[1] for t in times[variant])
        total = statistics.median(t[0] + t[1] for t in times[variant])
        rows.append(dict(variant=variant, encode_s=enc, decode_s=dec, total_s=total, first_s=first.get(variant),
                         max_abs_diff=(outputs[variant] - outputs[base]).abs().max().item()))
    ref_total = rows[0]["total_s"]
    for r in rows:
        r["speedup"] = ref_total / r["total_s"]
    head = dict(device=str(device), dtype=str(dtype), frames=args.frames, size=args.size, tile=args.tile,
                repeats=args.repeats, threads=torch.get_num_threads())
    if args.json:
        print(json.dumps(dict(setup=head, results=rows), indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in head.items()))
    print(f"{'variant':<14}{'encode s':>10}{'decode s':>10}{'total s':>10}{'speedup':>9}{'max|diff|':>12}"
          f"{'first call s':>14}")
    for r in rows:
        first_s = "" if r["first_s"] is None else f"{r['first_s']:>14.2f}"
        print(f"{r['variant']:<14}{r['encode_s']:>10.2f}{r['decode_s']:>10.2f}{r['total_s']:>10.2f}"
              f"{r['speedup']:>8.2f}x{r['max_abs_diff']:>12.2e}{first_s}")


if __name__ == "__main__":
    main()
