"""Peak memory and time of the decode's post-processing (colour fix + conversion), whole frames vs row bands.

What `seedvr2.pipeline.run._post_process` does after the VAE decode, on one frame: trim the decoded
canvas, check it, resize the input into the colour-fix reference, correct, convert to the output
range and dtype. "whole" forces the whole-frame path (`POST_TILE_PIXELS` = infinity, how every
frame ran before row bands); "bands" is the default (frames over `POST_TILE_PIXELS` = 8 Mpx go in
row bands). The decoded canvas is float32 in host memory, as a tiled VAE leaves it; the input is a
1080p uint8 frame. On a CPU the device is the host, so the post-processing's device memory is the
process's: every scenario runs in a fresh subprocess and reports its peak RSS (`ru_maxrss`) above
the RSS before the call (the canvas, the input and the imports). Time: the best of `--repeats`
calls after the measured one, single-threaded by default (the unit suite's setting; steadier on a
shared machine).

    python bench/color_chunks.py                       # 4K (whole either way) and 6K, wavelet
    python bench/color_chunks.py --outputs 4320 --variants bands --methods wavelet adain  # 8K, bands only
    python bench/color_chunks.py --json out.json

Also prints the planner's predicted decode peak for a 16K (15360x8640) image at 128-px VAE tiles.
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

import seedvr2.pipeline.run as run_module  # noqa: E402
from seedvr2.batching import plan_batches  # noqa: E402
from seedvr2.pipeline.settings import UpscaleSettings  # noqa: E402
from seedvr2.preprocess import plan_geometry  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def scenario(output: int, method: str, variant: str, repeats: int, threads: int) -> dict:
    """One post-processing of a 1080p input upscaled to `output` px short side (in this process)."""
    torch.set_num_threads(threads)
    if variant == "whole":
        run_module.POST_TILE_PIXELS = math.inf
    settings = UpscaleSettings(resolution=output, batch_size=1, color_correction=method)
    geometry = plan_geometry(1080, 1920, settings.resize_rule)
    run = run_module._Run(geometry=geometry, batches=plan_batches(1, 1, 0), settings=settings,
                          device=torch.device("cpu"), noise=None, check_interrupt=lambda: None, fit=None,
                          output_dtype=torch.float32, channels=3)
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 1080, 1920, 3), dtype=torch.uint8, generator=gen)
    decoded = torch.rand((3, 1, *geometry.canvas_hw), generator=gen) * 2 - 1
    batch = run.batches[0]
    baseline = _rss_bytes()
    start = time.perf_counter()
    pieces = run_module._post_process(run, batch, decoded, frames)
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    checksum = float(sum(p.double().sum() for p in pieces))
    del pieces
    times = [first]
    for _ in range(repeats):
        start = time.perf_counter()
        run_module._post_process(run, batch, decoded, frames)
        times.append(time.perf_counter() - start)
    oh, ow = geometry.output_hw
    return {"output": f"{ow}x{oh}", "mpx": oh * ow / 1e6, "method": method, "variant": variant,
            "banded": oh * ow > run_module.POST_TILE_PIXELS, "peak_bytes": peak - baseline,
            "frame_bytes": 12 * oh * ow, "seconds": min(times), "checksum": checksum}


def planner_16k() -> dict:
    """The planner's decode peak for a 16K image from 1080p at 128-px VAE tiles (3B fp16 on meta)."""
    import seedvr2
    from seedvr2.planner import MIN_AUTO_TILE, _ModelTerms, _shape, _vae_peak

    with torch.device("meta"):
        dit, vae = seedvr2.build_dit("3b").to(torch.float16), seedvr2.build_vae("default").to(torch.bfloat16)
    terms = _ModelTerms.read(dit, vae, 2, "spread")
    frames, settings = (1, 1080, 1920, 3), UpscaleSettings(resolution=8640, batch_size=1)
    plan = seedvr2.plan_memory(dit, vae, frames, settings, 8 * GIB)
    return {"decode_peak_128px_tiles": _vae_peak(terms, _shape(frames, settings), "decode", MIN_AUTO_TILE, 64),
            "min_vram": plan.min_vram_bytes, "plan_8gib": plan.summary()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outputs", type=int, nargs="+", default=[2160, 3240],
                        help="output short sides from a 1080p input (2160 = 4K, 3240 = 6K, 4320 = 8K)")
    parser.add_argument("--methods", nargs="+", default=["wavelet"], choices=["wavelet", "adain", "lab", "none"])
    parser.add_argument("--variants", nargs="+", default=["whole", "bands"], choices=["whole", "bands"],
                        help="'whole' of an 8K frame takes ~4 GB; '--outputs 4320 --variants bands' does not")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("OUTPUT", "METHOD", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(scenario(int(args.child[0]), args.child[1], args.child[2], args.repeats, args.threads)))
        return
    rows = []
    for output in args.outputs:
        for method in args.methods:
            for variant in args.variants:
                cmd = [sys.executable, __file__, "--child", str(output), method, variant,
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{r['output']:>10} {r['mpx']:6.1f} Mpx {method:8} {variant:6} "
                      f"{'(bands)' if r['banded'] else '(whole)':8} peak {r['peak_bytes'] / MIB:7.0f} MiB "
                      f"= {r['peak_bytes'] / r['frame_bytes']:4.2f} frames  {r['seconds']:6.2f} s", flush=True)
            if len(args.variants) < 2:
                continue
            whole, bands = rows[-2], rows[-1]
            same = "equal output" if whole["checksum"] == bands["checksum"] else \
                f"checksums differ by {abs(whole['checksum'] - bands['checksum']):.3g}"
            print(f"{'':>10} bands/whole: peak {bands['peak_bytes'] / whole['peak_bytes']:.2f}x, "
                  f"time {bands['seconds'] / whole['seconds']:.3f}x, {same}")
    plan = planner_16k()
    print(f"planner, 16K image from 1080p: decode peak at 128-px tiles {plan['decode_peak_128px_tiles'] / GIB:.2f} GiB, "
          f"minimum VRAM {plan['min_vram'] / GIB:.2f} GiB\n  {plan['plan_8gib']}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "planner_16k": plan}, indent=2))


if __name__ == "__main__":
    main()
