"""DiT forward time and weight memory: quantized blocks streamed compressed vs the 16-bit model.

Builds a full-size SeedVR2 DiT (``--model 7b``) with random weights in ``--dtype`` on the host,
then for each format in ``--formats``:

* ``bf16``/``fp16``: the plain model;
* a GGML type (``Q8_0``, ``Q4_K``, ...): every block matrix whose rows fit whole blocks becomes a
  ``QuantLinear`` holding random valid blocks of that type (speed does not depend on the values;
  scales are kept small so the activations stay finite).

and measures, on ``--device``: the forward at ``--tokens`` video tokens (58 text tokens) with the
whole model resident, and with every block swapped by block swap (``prefetch_blocks`` K=2), best of
``--iters``; the weights' device memory in each case. Prints one JSON line per format and the ratios
the issue asks for: swapped quantized vs resident 16-bit (time), and swapped vs resident for the
same quantized model (dequantization and streaming overhead).

    python bench/quant_speed.py --device cuda --model 7b --tokens 16384 --formats bf16,Q8_0,Q4_K
    python bench/quant_speed.py --device cpu --model tiny --tokens 64 --formats bf16,Q8_0  # smoke run

``--device cpu`` uses block swap's CPU mode (synchronous copies): only for checking the script.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = dict(dim=256, txt_in_dim=256, heads=2, head_dim=128, num_layers=4, mm_layers=4, mlp="gelu", mlp_hidden=1024,
            rope="pixel3d", rope_dim=64, out_norm=False, last_block_vid_only=False,
            window_shifted=(False, True, False, True))


def build(model: str, dtype: torch.dtype):
    from seedvr2.dit import DiTConfig, build_dit

    config = DiTConfig(**TINY) if model == "tiny" else model
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        net = build_dit(config)
    net = net.to_empty(device="cpu")
    for name, p in net.named_parameters():
        p.requires_grad_(False)
        if name.endswith("freqs"):
            continue
        p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(dtype) if p.dim() > 1 else torch.ones(p.shape))
    for module in net.modules():
        if hasattr(module, "materialize_buffers"):
            module.materialize_buffers(torch.device("cpu"))
    return net.eval()


def quantize_blocks(net, qname: str) -> int:
    """Swap every fitting block matrix for a QuantLinear of random valid ``qname`` blocks; returns the count."""
    from seedvr2.quant.ggml import GGML_TYPES
    from seedvr2.quant.linear import GGMLScheme, QuantLinear, swap_in_quant_linears

    qtype = GGML_TYPES[qname]
    names = [n for n, m in net.named_modules() if n.startswith("blocks.") and isinstance(m, torch.nn.Linear)
             and m.in_features % qtype.block_size == 0]
    biases = {n: net.get_submodule(n).bias for n in names}
    swap_in_quant_linears(net, {n: GGMLScheme(qtype) for n in names})
    gen = torch.Generator().manual_seed(1)
    small = torch.tensor([2e-4], dtype=torch.float16).view(torch.uint8)
    for n in names:
        m: QuantLinear = net.get_submodule(n)
        raw = torch.randint(0, 256, (m.out_features, m.in_features // qtype.block_size, qtype.type_size),
                            dtype=torch.uint8, generator=gen)
        for at in {"Q8_0": [0], "Q4_0": [0], "Q5_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2], "Q2_K": [80, 82],
                   "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[qname]:
            raw[..., at:at + 2] = small
        m.weight = raw.reshape(m.out_features, -1)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(biases[n].detach().clone(), requires_grad=False)
    return len(names)


def inputs(tokens: int, txt_dim: int, device: torch.device, dtype: torch.dtype):
    side = 2 * max(1, int(round((tokens / 4) ** 0.5)))  # 4 latent frames of side x side (2x2 patches)
    vid = torch.randn(4 * side * side, 33, device=device, dtype=dtype)
    txt = torch.randn(58, txt_dim, device=device, dtype=dtype)
    return (vid, txt, torch.tensor([[4, side, side]], device=device), torch.tensor([[58]], device=device),
            torch.tensor([500.0], device=device)), 4 * (side // 2) ** 2


def timed(net, args, device: torch.device, iters: int) -> float:
    """Best of `iters` forwards, in seconds."""
    from blockswap_bench import time_forwards

    return min(time_forwards(net, args, device, 0, iters)) / 1e3


def weight_bytes(net) -> int:
    return sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))


def run_format(base, fmt: str, args_host, device: torch.device, dtype: torch.dtype, iters: int) -> dict:
    from blockswap import BlockSwapConfig, apply_block_swap

    net = copy.deepcopy(base)
    quantized = 0 if fmt.lower() in ("bf16", "fp16") else quantize_blocks(net, fmt)
    net.compute_dtype = dtype
    args = tuple(a.to(device) for a in args_host)
    host_bytes = weight_bytes(net)
    # Resident: every weight on the device.
    resident = net.to(device)
    resident_s = timed(resident, args, device, iters)
    resident_bytes = weight_bytes(resident)
    net = resident.to("cpu")
    del resident
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # Every block swapped, K = 2.
    handle = apply_block_swap(net, BlockSwapConfig(blocks_to_swap=len(net.blocks), prefetch_blocks=2), device,
                              allow_cpu_device=device.type == "cpu")
    swapped_s = timed(net, args, device, iters)
    stats = handle.stats()
    handle.remove()
    return {"format": fmt, "quantized_matrices": quantized, "host_weight_bytes": host_bytes,
            "resident_s": round(resident_s, 4), "resident_weight_bytes": resident_bytes,
            "swapped_s": round(swapped_s, 4), "swapped_device_weight_bytes_peak": stats.device_weight_bytes_peak,
            "bytes_streamed_per_forward": stats.bytes_streamed_last_forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="7b", choices=["3b", "7b", "tiny"])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--formats", default="bf16,Q8_0,Q4_K")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    base = build(args.model, dtype)
    args_host, tokens = inputs(args.tokens, base.config.txt_in_dim, torch.device("cpu"), dtype)
    results = []
    for fmt in args.formats.split(","):
        r = run_format(base, fmt, args_host, device, dtype, args.iters)
        r["tokens"] = tokens
        results.append(r)
        print(json.dumps(r), flush=True)
    ref = results[0]
    for r in results[1:]:
        print(json.dumps({"format": r["format"],
                          "swapped_vs_resident_16bit_time": round(r["swapped_s"] / ref["resident_s"], 3),
                          "swapped_vs_swapped_16bit_time": round(r["swapped_s"] / ref["swapped_s"], 3),
                          "overhead_vs_same_model_resident": round(r["swapped_s"] / r["resident_s"], 3),
                          "resident_quantized_vs_16bit_time": round(r["resident_s"] / ref["resident_s"], 3),
                          "device_weights_swapped_vs_16bit": round(r["swapped_device_weight_bytes_peak"]
                                                                   / max(1, ref["swapped_device_weight_bytes_peak"]), 3)}))


if __name__ == "__main__":
    main()
