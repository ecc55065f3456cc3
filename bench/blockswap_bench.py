"""Block-swap benchmark on a synthetic SeedVR2-shaped DiT: resident vs seed-style swap vs ours.

Prints one table per (model, tokens), all rows measured in the same process on the same model:
  resident     every block on the device (the speed limit)
  seed-sync    the seed/numz way: each swapped block .to(device) before use and .to(cpu) after
  ours K=k     blockswap with all requested blocks swapped, k prefetch slots
Columns: ms per forward (median of the timed runs) and the ratio to resident, peak device memory
(allocated, weights + activations) and the engine's weights-on-device peak, peak host RSS
sampled during the row, and efficiency = max(t_resident, bytes_streamed / BW_pinned) / t, where
BW_pinned is host->device bandwidth measured from pinned memory at the start (1.0 = transfers
fully hidden or running at link speed).

  python bench/blockswap_bench.py                       # CPU: small shapes, wrapper overhead
  python bench/blockswap_bench.py --device cuda         # 3B and 7B block shapes, 4k and 16k tokens
  python bench/blockswap_bench.py --device cuda --models 7b --tokens 16384 --swap 36
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: import blockswap from the repo
from blockswap import BlockSwapConfig, apply_block_swap  # noqa: E402

TXT_TOKENS = 58
WINDOW = 1215  # tokens per attention window: 3 latent frames x 15 x 27 patches (720p-like, 16:9)


@dataclass(frozen=True)
class Shape:
    name: str
    dim: int
    heads: int
    hidden: int
    blocks: int
    mm_blocks: int      # blocks with separate vid/txt weights; the rest share one set
    swiglu: bool


SHAPES = {
    "3b": Shape("3B", 2560, 20, 6912, 32, 10, True),
    "7b": Shape("7B", 3072, 24, 12288, 36, 36, False),
    "tiny": Shape("tiny", 256, 4, 1024, 8, 3, True),
}


class Stream(nn.Module):
    """One set of attention + MLP weights (SeedVR2 blocks have one per stream in mm layers)."""

    def __init__(self, s: Shape):
        super().__init__()
        self.qkv = nn.Linear(s.dim, 3 * s.dim, bias=False)
        self.out = nn.Linear(s.dim, s.dim)
        self.mlp_in = nn.Linear(s.dim, (2 if s.swiglu else 1) * s.hidden, bias=not s.swiglu)
        self.mlp_out = nn.Linear(s.hidden, s.dim, bias=not s.swiglu)
        self.ada = nn.Parameter(torch.zeros(6, s.dim))
        self.swiglu = swiglu = s.swiglu
        del swiglu

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp_in(x)
        if self.swiglu:
            gate, h = h.chunk(2, dim=-1)
            h = F.silu(gate) * h
        else:
            h = F.gelu(h, approximate="tanh")
        return self.mlp_out(h)


class SyntheticBlock(nn.Module):
    def __init__(self, s: Shape, mm: bool):
        super().__init__()
        self.heads = s.heads
        self.vid = Stream(s)
        self.txt = Stream(s) if mm else None

    def forward(self, vid: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tw = self.txt or self.vid
        vq, vk, vv = self.vid.qkv(vid).chunk(3, dim=-1)          # (L, dim) each
        tq, tk, tv = tw.qkv(txt).chunk(3, dim=-1)                # (Lt, dim) each
        outs = []
        for start in range(0, vid.shape[0], WINDOW):              # windows of vid tokens + all text
            sl = slice(start, start + WINDOW)
            q, k, v = (torch.cat([a[sl], b]) for a, b in ((vq, tq), (vk, tk), (vv, tv)))
            q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(0, 1) for t in (q, k, v))  # (H, W+Lt, D)
            outs.append(F.scaled_dot_product_attention(q, k, v).transpose(0, 1).flatten(1))
        attn_vid = torch.cat([o[:-txt.shape[0]] for o in outs])
        attn_txt = torch.stack([o[-txt.shape[0]:] for o in outs]).mean(0)
        vid = vid + self.vid.out(attn_vid)
        txt = txt + tw.out(attn_txt)
        return vid + self.vid.mlp(vid), txt + tw.mlp(txt)


class SyntheticDiT(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.vid_in = nn.Linear(132, s.dim)
        self.txt_in = nn.Linear(5120, s.dim)
        self.blocks = nn.ModuleList(SyntheticBlock(s, i < s.mm_blocks) for i in range(s.blocks))
        self.vid_out = nn.Linear(s.dim, 64)

    def forward(self, vid: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        vid, txt = self.vid_in(vid), self.txt_in(txt)
        for block in self.blocks:
            vid, txt = block(vid, txt)
        return self.vid_out(vid)


def build(s: Shape, dtype: torch.dtype, device: torch.device) -> SyntheticDiT:
    """Random weights in `dtype` on the host; filled on `device` (fast) and moved once."""
    with torch.device("meta"):
        model = SyntheticDiT(s).to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.02, 0.02)
    return model.to("cpu").eval()


# --- measurement helpers ----------------------------------------------------------------------

class RssSampler:
    """Peak resident set size of this process, sampled at ~200 Hz while active."""

    def __enter__(self) -> "RssSampler":
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pinned_h2d_gbps(device: torch.device) -> float:
    from blockswap.backend import CudaBackend
    from blockswap.pinning import PinBudget, pin, unpin
    src = torch.empty(1 << 30, dtype=torch.uint8)
    assert pin(src, CudaBackend(device), PinBudget(1 << 62)), "cudaHostRegister failed"
    dst = torch.empty_like(src, device=device)
    stream = torch.cuda.Stream(device)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=True)
        e0.record(stream)
        for _ in range(10):
            dst.copy_(src, non_blocking=True)
        e1.record(stream)
    e1.synchronize()
    gbps = 10 * src.numel() / (e0.elapsed_time(e1) * 1e-3) / 1e9
    unpin(src)
    return gbps


def time_forwards(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device, warmup: int,
                  runs: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def seed_style_swap(model: SyntheticDiT, swapped: range, device: torch.device) -> list:
    """The incumbent's scheme: synchronous .to(device) in, compute, .to(cpu) back out."""
    hooks = []
    for i in swapped:
        block = model.blocks[i]
        hooks.append(block.register_forward_pre_hook(lambda m, a: m.to(device) and None))
        hooks.append(block.register_forward_hook(lambda m, a, o: m.to("cpu") and None))
    return hooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=None, help="3b 7b tiny (default: 3b 7b on cuda, tiny on cpu)")
    parser.add_argument("--tokens", nargs="+", type=int, default=None, help="vid tokens per forward")
    parser.add_argument("--swap", type=int, default=None, help="blocks to swap (default: all)")
    parser.add_argument("--prefetch", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--placement", default="spread")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-seed", action="store_true", help="skip the (slow) seed-style row")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    models = args.models or (["3b", "7b"] if cuda else ["tiny"])
    tokens_list = args.tokens or ([4096, 16384] if cuda else [1024])
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        bw = pinned_h2d_gbps(device)
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, pinned H2D {bw:.1f} GB/s")
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        bw = float("inf")
        print(f"CPU ({os.cpu_count()} threads), torch {torch.__version__}: streaming path with synchronous copies; "
              "ratios show the engine's overhead, not PCIe")

    for key in models:
        shape = SHAPES[key]
        t0 = time.perf_counter()
        model = build(shape, dtype, device)
        block_bytes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in model.blocks]
        io_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("blocks."))
        n_swap = shape.blocks if args.swap is None else min(args.swap, shape.blocks)
        print(f"\n{shape.name}: {shape.blocks} blocks, {sum(block_bytes) / 2**30:.2f} GiB of blocks "
              f"(largest {max(block_bytes) / 2**30:.3f} GiB), IO {io_bytes / 2**20:.0f} MiB, {dtype}, "
              f"built in {time.perf_counter() - t0:.0f} s; swapping {n_swap}")
        for tokens in tokens_list:
            g = torch.Generator().manual_seed(0)
            inputs = (torch.randn(tokens, 132, generator=g).to(device, dtype),
                      torch.randn(TXT_TOKENS, 5120, generator=g).to(device, dtype))
            rows = run_rows(model, shape, inputs, device, n_swap, args, io_bytes, block_bytes)
            print_table(shape, tokens, rows, bw, cuda)
        del model


def run_rows(model, shape, inputs, device, n_swap, args, io_bytes, block_bytes) -> list[dict]:
    cuda = device.type == "cuda"
    rows = []

    def measure(name: str, streamed: int, weights_peak: int | None, setup, teardown) -> None:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with RssSampler() as sampler:
            state = setup()
            times = time_forwards(model, inputs, device, args.warmup, args.runs)
            extra = teardown(state)
        rows.append(dict(name=name, ms=statistics.median(times), streamed=streamed,
                         vram=torch.cuda.max_memory_allocated(device) if cuda else None,
                         weights=extra if extra is not None else weights_peak, rss=sampler.peak))

    total = sum(block_bytes) + io_bytes
    if cuda:
        measure("resident", 0, total, lambda: model.to(device), lambda s: model.to("cpu") and None)
    else:  # on CPU "resident" is the plain model
        measure("plain model", 0, None, lambda: None, lambda s: None)
        measure("ours, 0 swapped", 0, None,
                lambda: apply_block_swap(model, BlockSwapConfig(blocks_to_swap=0), device, allow_cpu_device=True),
                lambda h: h.remove())

    swapped = range(n_swap)
    streamed = sum(block_bytes[i] for i in swapped)

    def seed_setup():
        model.vid_in.to(device), model.txt_in.to(device), model.vid_out.to(device)
        for i in range(n_swap, shape.blocks):
            model.blocks[i].to(device)
        return seed_style_swap(model, swapped, device)

    def seed_teardown(hooks):
        for h in hooks:
            h.remove()
        model.to("cpu")

    if cuda and not args.no_seed:
        measure("seed-sync", 2 * streamed, None, seed_setup, seed_teardown)
    for k in args.prefetch:
        cfg = BlockSwapConfig(blocks_to_swap=n_swap, prefetch_blocks=k, placement=args.placement, debug=False)
        handles = []

        def setup(cfg=cfg):
            handles.append(apply_block_swap(model, cfg, device, allow_cpu_device=not cuda))
            return handles[-1]

        def teardown(h):
            peak = h.stats().device_weight_bytes_peak
            print("   ", h.stats().summary())
            h.remove()
            return peak

        measure(f"ours K={k}", streamed, None, setup, teardown)
    return rows


def print_table(shape: Shape, tokens: int, rows: list[dict], bw_gbps: float, cuda: bool) -> None:
    base = rows[0]["ms"]
    print(f"\n  {shape.name}, {tokens} vid tokens + {TXT_TOKENS} text tokens")
    print(f"  {'config':<18}{'ms/fwd':>9}{'x res.':>8}{'peak VRAM GiB':>15}{'weights GiB':>13}{'peak RSS GiB':>14}"
          f"{'efficiency':>12}")
    for r in rows:
        t_xfer = r["streamed"] / (bw_gbps * 1e9) * 1e3 if r["streamed"] else 0.0
        eff = max(base, t_xfer) / r["ms"]
        vram = f"{r['vram'] / 2**30:.2f}" if r["vram"] is not None else "-"
        weights = f"{r['weights'] / 2**30:.2f}" if r["weights"] is not None else "-"
        print(f"  {r['name']:<18}{r['ms']:>9.1f}{r['ms'] / base:>8.2f}{vram:>15}{weights:>13}"
              f"{r['rss'] / 2**30:>14.2f}{eff:>12.2f}")
    if cuda:
        ours = [r for r in rows if r["name"].startswith("ours")]
        seed = next((r for r in rows if r["name"] == "seed-sync"), None)
        best = min(ours, key=lambda r: r["ms"])
        if seed is not None:
            print(f"  best ours ({best['name']}) is {seed['ms'] / best['ms']:.2f}x faster than seed-sync")
        print(f"  transfer lower bound {ours[0]['streamed'] / (bw_gbps * 1e9) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
