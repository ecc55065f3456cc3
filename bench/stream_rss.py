"""Peak host RAM (RSS) of the CLI on a 30- and a 300-frame video: streamed vs all in memory.

Tiny random-weight models on CPU (tests/tiny_models.py). The input is large per frame (640x360
by default) and the output small (--resolution 16), so the frames, not the models, dominate what
grows with the length. Each run is a fresh subprocess; its peak RSS is its own `ru_maxrss`.

* stream: `python -m seedvr2 IN -o OUT.mp4 --window-batches 2` (the CLI: lazy `VideoSource`,
  frames written as they are final): RSS must not grow with the length.
* memory: what the CLI did before streaming: `read_video` (the whole clip decoded) and one
  phase-major pass over every batch into a `TensorSink`.

    python bench/stream_rss.py                 # 30 and 300 frames
    python bench/stream_rss.py --frames 30 600 --size 1280x720
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

CHILD = r"""
import json, resource, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
torch.set_num_threads(1)
mode, src, out, models = sys.argv[1:5]
start = time.perf_counter()
if mode == "stream":
    from seedvr2.cli import main
    code = main([src, "-o", out, "-y", "--models-dir", models, "--dit", "tiny_dit_3b.safetensors", "--vae",
                 "tiny_vae.safetensors", "--no-download", "--device", "cpu", "-q", "--resolution", "16",
                 "--vae-tile-size", "0", "--batch-size", "5", "--temporal-overlap", "1", "--window-batches", "2"])
    assert code == 0
else:
    from seedvr2.distributed import ModelSpec
    from seedvr2.pipeline import UpscaleSettings, VAETiling, upscale
    from seedvr2.video_io import read_video
    frames, _ = read_video(src)
    loaded, _ = ModelSpec("tiny_dit_3b.safetensors", "tiny_vae.safetensors", models,
                          vae_tiling=VAETiling(None, 64, 4), download=False).load("cpu")
    upscale(frames, loaded, UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=1), output_dtype=torch.uint8,
            window=10**9)
print(json.dumps({{"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start}}))
"""


def write_video(path: Path, frames: int, width: int, height: int) -> None:
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[0:height, 0:width]
        for t in range(frames):
            rgb = np.stack([(x + 3 * t) % 256, (y + t) % 256, (x + y) % 256], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def measure(mode: str, src: Path, out: Path, models: Path) -> dict:
    child = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"))
    result = subprocess.run([sys.executable, "-c", child, mode, str(src), str(out), str(models)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs=2, default=(30, 300))
    parser.add_argument("--size", default="640x360", help="input WxH")
    parser.add_argument("--modes", nargs="+", default=("stream", "memory"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    from tiny_models import write_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tiny_models(tmp / "models")
        rows = {}
        for n in args.frames:
            src = tmp / f"in_{n}.mp4"
            t0 = time.perf_counter()
            write_video(src, n, width, height)
            for mode in args.modes:
                rows[(mode, n)] = measure(mode, src, tmp / f"out_{mode}_{n}.mp4", tmp / "models")
                r = rows[(mode, n)]
                print(f"{mode:>6} {n:4d} frames {width}x{height}: peak RSS {r['rss_mib']:7.1f} MiB, "
                      f"{r['seconds']:5.1f} s", flush=True)
        a, b = args.frames
        for mode in args.modes:
            ratio = rows[(mode, b)]["rss_mib"] / rows[(mode, a)]["rss_mib"]
            print(f"{mode:>6}: peak RSS {b} / {a} frames = {ratio:.3f}")


if __name__ == "__main__":
    main()
