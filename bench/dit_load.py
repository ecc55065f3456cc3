"""Peak host RAM while loading a full-size SeedVR2 3B DiT with ``seedvr2.load_dit``.

Writes a 3B-shaped fp16 safetensors file (random values, the 635 official keys, ~6.8 GB) into a
temporary folder, loads it in a fresh process, and reports that process's peak RSS relative to the
file size (goal: <= 1.10, i.e. one copy of the weights plus the interpreter and torch). The file is
deleted afterwards unless ``--keep`` is given.

    python bench/dit_load.py [--dir /big/disk] [--keep] [--model 3b|7b]

Linux or macOS (peak RSS from ``getrusage``).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK_ELEMENTS = 16 * 1024 * 1024


def write_random_checkpoint(path: Path, model: str) -> int:
    """Stream a random fp16 checkpoint with the model's exact keys and shapes; returns its size."""
    from seedvr2 import build_dit

    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in build_dit(model).state_dict().items()}
    header, offset = {}, 0
    for name in sorted(shapes):
        nbytes = 2 * _numel(shapes[name])
        header[name] = {"dtype": "F16", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors: header padded to 8 bytes
    gen = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in sorted(shapes):
            remaining = _numel(shapes[name])
            while remaining:
                n = min(remaining, CHUNK_ELEMENTS)
                chunk = torch.randn(n, generator=gen).mul_(0.02).half()
                f.write((ctypes.c_char * (2 * n)).from_address(chunk.data_ptr()))  # raw bytes, no numpy
                remaining -= n
    return path.stat().st_size


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _current_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(path: str) -> None:
    """Runs in a fresh process: load, then print the memory figures as JSON."""
    from seedvr2 import load_dit

    baseline = _current_rss_bytes() if sys.platform.startswith("linux") else _peak_rss_bytes()
    start = time.perf_counter()
    model = load_dit(path, device="cpu")
    seconds = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"baseline_rss": baseline, "peak_rss": _peak_rss_bytes(), "seconds": seconds,
                      "weight_bytes": weights, "blocks": len(model.blocks)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="folder for the temporary checkpoint (needs ~7 GB free)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    parser.add_argument("--model", default="3b", choices=["3b", "7b"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    folder = Path(tempfile.mkdtemp(prefix="dit_load_", dir=args.dir))
    path = folder / f"seedvr2_{args.model}_random_fp16.safetensors"
    try:
        t0 = time.perf_counter()
        size = write_random_checkpoint(path, args.model)
        print(f"wrote {path} ({size / 1e9:.3f} GB) in {time.perf_counter() - t0:.0f} s")
        out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            folder.rmdir()
    gb = 1e9
    print(f"model: {args.model} ({r['blocks']} blocks), weights in memory {r['weight_bytes'] / gb:.3f} GB, "
          f"loaded in {r['seconds']:.1f} s ({size / gb / r['seconds']:.2f} GB/s)")
    print(f"RSS before load (python + torch): {r['baseline_rss'] / gb:.3f} GB")
    print(f"peak RSS while loading:           {r['peak_rss'] / gb:.3f} GB")
    print(f"peak RSS / file size:             {r['peak_rss'] / size:.3f}  (goal <= 1.10)")
    print(f"(peak - baseline) / file size:    {(r['peak_rss'] - r['baseline_rss']) / size:.3f}")


if __name__ == "__main__":
    main()
