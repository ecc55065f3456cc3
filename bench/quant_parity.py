"""Output parity of the golden tiny DiTs stored in each quantized format, vs the official fp32 output.

For each format the golden fp32 weights are written to a file in that format (the converter for
f16/bf16/q8_0/fp8; a simple Q4_K quantizer written here, the ``gguf`` package's Q4_0 where a row
is too short for 256-value K-blocks; comfy-kitchen's quantizers for mxfp8/nvfp4 when installed;
int8 ConvRot as the Comfy-Org files store it), loaded with ``load_dit`` and run at fp32 compute.
Prints the relative RMS error of the output: ``||out - ref|| / ||ref||``.

    python bench/quant_parity.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT.parent / "shared" / "reference" / "golden"
KEYS = ("vid", "txt", "vid_shape", "txt_shape", "timestep")


def quantize_q4_k(w: torch.Tensor) -> torch.Tensor:
    """Rows of ``w`` (in % 256 == 0) -> Q4_K blocks (uint8 [out, in/256*144]); min/max per 32 values."""
    from seedvr2.quant.ggml import QK_K

    out_f, in_f = w.shape
    x = w.float().reshape(-1, 8, 32)
    lo = x.amin(-1).clamp(max=0)
    hi = x.amax(-1)
    scale = (hi - lo) / 15
    mins = -lo
    d = (scale.amax(-1, keepdim=True) / 63).to(torch.float16)
    dmin = (mins.amax(-1, keepdim=True) / 63).to(torch.float16)
    df, dminf = d.float().clamp_min(1e-30), dmin.float().clamp_min(1e-30)
    sc = torch.round(scale / df).clamp(0, 63).to(torch.uint8)
    mn = torch.round(mins / dminf).clamp(0, 63).to(torch.uint8)
    dl = (d.float() * sc.float()).unsqueeze(-1)
    ml = (dmin.float() * mn.float()).unsqueeze(-1)
    q = torch.where(dl > 0, torch.round((x + ml) / dl.clamp_min(1e-30)), torch.zeros_like(x)).clamp(0, 15).to(torch.uint8)
    packed_scales = torch.empty(x.shape[0], 12, dtype=torch.uint8)
    packed_scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed_scales[:, 4:8] = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    packed_scales[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(x.shape[0], 128)  # sub-blocks (2j, 2j+1) share 32 bytes
    blocks = torch.cat([d.view(torch.uint8).reshape(-1, 2), dmin.view(torch.uint8).reshape(-1, 2), packed_scales, qs], 1)
    assert blocks.shape[1] == 144 and in_f % QK_K == 0
    return blocks.reshape(out_f, -1)


def _is_block_matrix(k: str, v: torch.Tensor) -> bool:
    return k.startswith("blocks.") and k.endswith(".weight") and v.dim() == 2


def write_gguf_4bit(weights: dict[str, torch.Tensor], path: Path) -> str:
    import gguf

    from seedvr2.quant.ggml import GGML_TYPES
    from seedvr2.quant.gguf_file import GGUFOut

    out = GGUFOut(path)
    plan = {}
    for k, v in weights.items():
        t = "F16"
        if _is_block_matrix(k, v):
            t = "Q4_K" if v.shape[1] % 256 == 0 else "Q4_0"
        plan[k] = t
        out.add(k, tuple(v.shape), GGML_TYPES[t])
    for k, v in weights.items():
        if plan[k] == "Q4_K":
            data = quantize_q4_k(v)
        elif plan[k] == "Q4_0":
            data = torch.from_numpy(gguf.quantize(v.float().numpy(), gguf.GGMLQuantizationType.Q4_0))
        else:
            data = v.to(torch.float16)
        out.write(k, data)
    out.close()
    n = sum(t == "Q4_K" for t in plan.values())
    return f"Q4_K on {n} matrices, Q4_0 on {sum(t == 'Q4_0' for t in plan.values())}"


def write_comfy(weights: dict[str, torch.Tensor], path: Path, fmt: str) -> str:
    from seedvr2.quant.comfy import hadamard

    tensors, n = {}, 0
    for k, w in weights.items():
        layer = k[: -len(".weight")]
        fits = _is_block_matrix(k, w) and w.shape[1] % {"int8": 256, "mxfp8": 32, "nvfp4": 16}[fmt] == 0
        if not fits:
            tensors[k] = w.to(torch.float16)
            continue
        n += 1
        if fmt == "int8":
            o, i = w.shape
            rot = (w.view(o, i // 256, 256) @ hadamard(256, w.device)).view(o, i)
            s = rot.abs().amax(1, keepdim=True) / 127
            tensors[k], tensors[layer + ".weight_scale"] = torch.round(rot / s).clamp(-127, 127).to(torch.int8), s
            marker = {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 256}
        else:
            import comfy_kitchen as ck
            if fmt == "mxfp8":
                tensors[k], tensors[layer + ".weight_scale"] = ck.quantize_mxfp8(w.float())
            else:
                s2 = (w.abs().max() / (448 * 6)).float()
                tensors[k], tensors[layer + ".weight_scale"] = ck.quantize_nvfp4(w.float(), s2)
                tensors[layer + ".weight_scale_2"] = s2
            marker = {"format": fmt}
        tensors[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(marker).encode()), dtype=torch.uint8)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return f"{fmt} on {n} matrices"


def main() -> None:
    from seedvr2.convert import convert
    from seedvr2.dit import load_dit

    tmp = Path(tempfile.mkdtemp(prefix="quant_parity_"))
    for family in ("3b", "7b"):
        src = GOLDEN / f"dit{family}_tiny_weights.safetensors"
        io = load_file(GOLDEN / f"dit{family}_tiny_io.safetensors")
        ref = io["out_fp32"]
        weights = load_file(src)
        jobs = [("f16 (gguf)", lambda p: convert(src, p, "f16"), ".gguf"),
                ("bf16 (gguf)", lambda p: convert(src, p, "bf16"), ".gguf"),
                ("q8_0 (gguf)", lambda p: convert(src, p, "q8_0"), ".gguf"),
                ("fp8 scaled (safetensors)", lambda p: convert(src, p, "fp8"), ".safetensors"),
                ("Q4_K/Q4_0 (gguf)", lambda p: write_gguf_4bit(weights, p), ".gguf"),
                ("int8 ConvRot", lambda p: write_comfy(weights, p, "int8"), ".safetensors"),
                ("mxfp8", lambda p: write_comfy(weights, p, "mxfp8"), ".safetensors"),
                ("nvfp4", lambda p: write_comfy(weights, p, "nvfp4"), ".safetensors")]
        for name, make, ext in jobs:
            path = tmp / f"{family}-{name.split()[0].replace('/', '_')}{ext}"
            try:
                info = make(path)
            except ImportError as exc:
                print(f"{family} {name}: skipped ({exc})")
                continue
            with torch.no_grad():
                out = load_dit(path, compute_dtype=torch.float32)(*(io[k] for k in KEYS))
            err = ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
            detail = info if isinstance(info, str) else ", ".join(f"{v} {k}" for k, v in sorted(info.items()))
            print(f"{family} {name:26s} rel RMS {err:.4f}   ({detail}; {path.stat().st_size} B)")
            path.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
