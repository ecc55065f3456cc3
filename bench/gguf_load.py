"""Peak host RAM while loading a full-size SeedVR2 7B GGUF (Q4_K_M layout) with ``seedvr2.load_dit``.

Writes a 7B-shaped GGUF with the published Q4_K_M layout (the 288 block matrices Q4_K, every other
tensor F16; random but valid blocks, ~4.7 GB) with the ``gguf`` package, then, in fresh processes:

* ``load``: ``load_dit`` as the loader node calls it (bf16 storage for the F16 tensors) and a pass
  reading every byte of every weight (the mmap'd pages all become resident);
* ``blockswap``: ``load_dit`` then ``apply_block_swap`` (all 36 blocks swapped, the engine's CPU
  mode), which packs every unit's compressed bytes into its host master.

Reports each process's peak RSS over the file size (goal <= 1.10), and over the file size after
subtracting the RSS of the bare interpreter with torch imported. The file is deleted afterwards
unless ``--keep``.

    python bench/gguf_load.py [--dir /big/disk] [--keep] [--qtype Q4_K]

Linux (peak RSS from ``getrusage``). Needs the optional ``gguf`` package.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_random_gguf(path: Path, qname: str) -> int:
    """Stream a 7B-shaped GGUF: block matrices as random ``qname`` blocks, the rest random F16."""
    from seedvr2 import build_dit
    from seedvr2.quant.ggml import GGML_TYPES
    from seedvr2.quant.gguf_file import GGUFOut

    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in build_dit("7b").state_dict().items()}
    qtype = GGML_TYPES[qname]
    types = {n: (qtype if n.startswith("blocks.") and n.endswith(".weight") and len(s) == 2
                 and s[1] % qtype.block_size == 0 else GGML_TYPES["F16"]) for n, s in shapes.items()}
    out = GGUFOut(path, arch="seedvr")
    for name in sorted(shapes):
        out.add(name, shapes[name], types[name])
    gen = torch.Generator().manual_seed(0)
    small = torch.tensor([0.001], dtype=torch.float16).view(torch.uint8)
    for name in sorted(shapes):
        shape, t = shapes[name], types[name]
        if t.quantized:
            raw = torch.randint(0, 256, (shape[0], shape[1] // t.block_size, t.type_size), dtype=torch.uint8, generator=gen)
            raw[..., 0:2] = small  # Q4_K/Q5_K: d and dmin at bytes 0..3; keep scales finite
            raw[..., 2:4] = small
            out.write(name, raw.reshape(shape[0], -1))
        else:
            out.write(name, (torch.randn(shape, generator=gen) * 0.02).to(torch.float16))
    out.close()
    return path.stat().st_size


CHILD = r"""
import resource, sys, time, torch
sys.path.insert(0, {root!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from seedvr2.dit import load_dit
t0 = time.perf_counter()
model = load_dit({path!r}, dtype=torch.bfloat16, compute_dtype=torch.bfloat16)
if {mode!r} == "blockswap":
    from blockswap import BlockSwapConfig, apply_block_swap
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=36, prefetch_blocks=2), "cpu", allow_cpu_device=True)
    host = handle.stats().host_weight_bytes
else:
    host = 0
    for t in list(model.parameters()) + list(model.buffers()):
        host += t.numel() * t.element_size()
        t.view(-1)[:: max(1, 4096 // t.element_size())].float().sum()  # touch every page
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT", base, peak, host, dt)
"""


def measure(path: Path, mode: str) -> tuple[int, int, int, float]:
    code = CHILD.format(root=str(ROOT), path=str(path), mode=mode)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT"))
    base, peak, host, dt = line.split()[1:]
    return int(base), int(peak), int(host), float(dt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write the temporary file (needs ~5 GB)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--qtype", default="Q4_K")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(dir=args.dir, prefix="gguf_load_"))
    path = tmp / f"seedvr2_ema_7b-{args.qtype}_M-random.gguf"
    try:
        t0 = time.perf_counter()
        size = write_random_gguf(path, args.qtype)
        print(f"wrote {path.name}: {size / 1e9:.3f} GB in {time.perf_counter() - t0:.0f} s")
        for mode in ("load", "blockswap"):
            base, peak, host, dt = measure(path, mode)
            print(json.dumps({"mode": mode, "file_bytes": size, "peak_rss": peak, "baseline_rss": base,
                              "peak_rss_over_file": round(peak / size, 3),
                              "peak_minus_baseline_over_file": round((peak - base) / size, 3),
                              "weights_bytes": host, "seconds": round(dt, 1)}))
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            tmp.rmdir()


if __name__ == "__main__":
    main()
