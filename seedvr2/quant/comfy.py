"""ComfyUI's quantized single-file formats, expanded with torch (or comfy-kitchen's kernels when importable).

A quantized Linear ``<p>`` in a ComfyUI file stores ``<p>.weight`` (packed) plus scales, and names its
format in ``<p>.comfy_quant`` (UTF-8 JSON in a uint8 tensor), in the safetensors metadata
``_quantization_metadata`` (``{"layers": {"<p>": {"format": ...}}}``), or, for the legacy layout, by a
top-level ``scaled_fp8`` key with ``<p>.scale_weight``. Formats (ComfyUI ``comfy/quant_ops.py``
QUANT_ALGOS, shared/guides/checkpoints.md 5.4):

| format            | weight              | scales                                                     | W =                                  |
|-------------------|---------------------|------------------------------------------------------------|--------------------------------------|
| float8_e4m3fn/e5m2| fp8 [out, in]       | ``weight_scale`` f32 scalar                                | q * s                                |
| int8_tensorwise   | int8 [out, in]      | ``weight_scale`` f32 [out, 1] or scalar                    | q * s (ConvRot: then x H per 256 cols)|
| mxfp8             | fp8 e4m3 [out, in]  | ``weight_scale`` E8M0 bytes, one per 32 inputs, swizzled   | q * 2^(e - 127)                       |
| nvfp4             | uint8 [out, in/2]   | ``weight_scale`` fp8 per 16 inputs, swizzled; ``weight_scale_2`` f32 | e2m1(code) * s_block * s2   |

"Swizzled" is cuBLAS's block-scale layout: the scale matrix padded to 128-row x 4-column tiles, each
tile stored as 32 x (4 x 4) with row ``32 i + j`` at position ``16 j + 4 i``. ConvRot's ``H`` is the
orthonormal 256 x 256 Hadamard ``(H4 x H4 x H4 x H4) / 16`` with ``H4`` below (symmetric, its own
inverse). NVFP4 packs the even element in the high nibble.

When the ``comfy_kitchen`` package (a ComfyUI requirement) imports, its dequantizers are used for
mxfp8 and nvfp4 (``use_kitchen``); both paths agree (tests/test_quant_comfy.py).
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from .linear import QuantScheme

__all__ = ["ComfyScheme", "scheme_from_marker", "FORMATS", "kitchen", "use_kitchen"]

FORMATS = ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise", "mxfp8", "nvfp4")
_FP8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_H4 = ((1, 1, 1, -1), (1, 1, -1, 1), (1, -1, 1, 1), (-1, 1, 1, 1))
_CACHE: dict[tuple, torch.Tensor] = {}

use_kitchen = True  # set False to force the torch path (tests compare both)


def kitchen():
    """The ``comfy_kitchen`` module when importable and enabled, else None."""
    if not use_kitchen:
        return None
    try:
        import comfy_kitchen
    except ImportError:  # absent: use torch
        return None
    except Exception:  # noqa: BLE001 - broken for this torch build: use torch
        return None
    return comfy_kitchen


def hadamard(size: int, device: torch.device) -> torch.Tensor:
    """The orthonormal ConvRot Hadamard of ``size`` (a power of 4), float32, cached per device."""
    key = ("h", size, str(device))
    h = _CACHE.get(key)
    if h is None:
        if size < 4 or 4 ** round(torch.log2(torch.tensor(float(size))).item() / 2) != size:
            raise ValueError(f"ConvRot group size must be a power of 4, got {size}")
        h4 = torch.tensor(_H4, dtype=torch.float32)
        h = h4
        while h.shape[0] < size:
            h = torch.kron(h, h4)
        h = (h / (size ** 0.5)).to(device)
        _CACHE[key] = h
    return h


def unswizzle(scales: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """cuBLAS tiled block-scale layout -> ``[rows, cols]`` (see module doc)."""
    rb, cb = -(-rows // 128), -(-cols // 4)
    if scales.numel() != rb * 128 * cb * 4:
        raise ValueError(f"block scales hold {scales.numel()} values, expected {rb * 128 * cb * 4} for a "
                         f"{rows} x {cols} scale matrix padded to 128 x 4 tiles")
    tiles = scales.reshape(rb, cb, 32, 4, 4).permute(0, 1, 3, 2, 4).reshape(rb, cb, 128, 4)
    return tiles.permute(0, 2, 1, 3).reshape(rb * 128, cb * 4)[:rows, :cols]


class ComfyScheme(QuantScheme):
    """One ComfyUI format with the exact stored shapes/dtypes of one layer's tensors."""

    def __init__(self, fmt: str, stored: Mapping[str, tuple[tuple[int, ...], torch.dtype]], *,
                 convrot_groupsize: int | None = None):
        self.fmt, self.stored, self.convrot_groupsize = fmt, dict(stored), convrot_groupsize
        self.name = fmt + ("+convrot" if convrot_groupsize else "")

    def tensors(self, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return dict(self.stored)

    def dequantize(self, t: Mapping[str, torch.Tensor], out_features: int, in_features: int) -> torch.Tensor:
        q, s = t["weight"], t["weight_scale"]
        ck = kitchen()
        if self.fmt in _FP8:
            return q.to(torch.float32) * s.to(torch.float32)
        if self.fmt == "int8_tensorwise":
            w = q.to(torch.float32) * s.to(torch.float32)
            if self.convrot_groupsize:
                g = self.convrot_groupsize
                w = (w.view(out_features, in_features // g, g) @ hadamard(g, w.device)).view(out_features, in_features)
            return w
        if self.fmt == "mxfp8":
            if ck is not None:
                return ck.dequantize_mxfp8(q, s.view(torch.uint8).view(_e8m0()), torch.float32)
            e = unswizzle(s.view(torch.uint8), out_features, in_features // 32).to(torch.int32)
            scale = torch.pow(2.0, (e - 127).to(torch.float32))
            return (q.to(torch.float32).view(out_features, -1, 32) * scale.unsqueeze(-1)).view(out_features, in_features)
        if self.fmt == "nvfp4":
            s2 = t["weight_scale_2"]
            if ck is not None:
                return ck.dequantize_nvfp4(q, s2.to(torch.float32), s.view(torch.float8_e4m3fn), torch.float32)
            lut = _lut(q.device)
            codes = torch.stack([q >> 4, q & 0x0F], dim=-1).view(out_features, in_features).to(torch.int64)
            values = lut[codes]
            block = unswizzle(s.view(torch.float8_e4m3fn), out_features, in_features // 16).to(torch.float32)
            scale = s2.to(torch.float32) * block
            return (values.view(out_features, -1, 16) * scale.unsqueeze(-1)).view(out_features, in_features)
        raise AssertionError(self.fmt)


def _e8m0() -> torch.dtype:
    return getattr(torch, "float8_e8m0fnu", torch.uint8)


def _lut(device: torch.device) -> torch.Tensor:
    key = ("e2m1", str(device))
    if key not in _CACHE:
        _CACHE[key] = torch.tensor(_E2M1, dtype=torch.float32, device=device)
    return _CACHE[key]


def parse_marker(raw: torch.Tensor | bytes | str | Mapping, where: str) -> dict:
    """The JSON object of a ``.comfy_quant`` marker (uint8 tensor, bytes, str or dict)."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, torch.Tensor):
        raw = bytes(raw.to(torch.uint8).flatten().tolist())
    try:
        marker = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{where}: quantization marker is not valid JSON ({exc})") from None
    if not isinstance(marker, dict) or "format" not in marker:
        raise ValueError(f"{where}: quantization marker {marker!r} has no 'format'")
    return marker


def scheme_from_marker(marker: Mapping, layer: str, entries: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                       out_features: int, in_features: int) -> ComfyScheme:
    """Check layer ``layer``'s stored tensors (``entries``: suffix -> (dtype, shape)) against its
    marker's format and build the scheme. Raises ``ValueError`` naming the layer and the mismatch."""
    fmt = marker.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"{layer}: quantization format {fmt!r} is not supported (supported: {', '.join(FORMATS)})")
    if "input_scale" in entries or "pre_quant_scale" in entries:
        raise ValueError(f"{layer}: activation scales (input_scale / pre_quant_scale) are not supported")
    want: dict[str, tuple[torch.dtype | tuple, int]] = {}
    o, i = out_features, in_features
    if fmt in _FP8:
        want = {"weight": (_FP8[fmt], o * i), "weight_scale": (torch.float32, 1)}
    elif fmt == "int8_tensorwise":
        scale_n = entries.get("weight_scale", (None, ()))[1]
        want = {"weight": (torch.int8, o * i),
                "weight_scale": (torch.float32, o if _numel(scale_n) == o else 1)}
    elif fmt == "mxfp8":
        want = {"weight": (torch.float8_e4m3fn, o * i),
                "weight_scale": ((torch.uint8, _e8m0()), -(-o // 128) * 128 * -(-(i // 32) // 4) * 4)}
    elif fmt == "nvfp4":
        want = {"weight": (torch.uint8, o * i // 2),
                "weight_scale": (torch.float8_e4m3fn, -(-o // 128) * 128 * -(-(i // 16) // 4) * 4),
                "weight_scale_2": (torch.float32, 1)}
    stored: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, (dtype, numel) in want.items():
        if name not in entries:
            raise ValueError(f"{layer}: format {fmt} needs '{layer}.{name}', which the file lacks")
        got_dtype, shape = entries[name]
        ok = got_dtype in dtype if isinstance(dtype, tuple) else got_dtype == dtype
        if not ok or _numel(shape) != numel:
            raise ValueError(f"{layer}.{name}: {got_dtype} {list(shape)} does not fit format {fmt} for a "
                             f"{o} x {i} weight (expected {dtype}, {numel} values)")
        stored[name] = (tuple(shape), got_dtype)
    if fmt == "int8_tensorwise" and (i % 256 if marker.get("convrot") else 0):
        raise ValueError(f"{layer}: ConvRot needs in_features divisible by the group size, got {i}")
    group = int(marker.get("convrot_groupsize", 256)) if marker.get("convrot") else None
    if fmt in ("mxfp8", "nvfp4") and i % (32 if fmt == "mxfp8" else 16):
        raise ValueError(f"{layer}: {fmt} needs in_features divisible by its block size, got {i}")
    return ComfyScheme(fmt, stored, convrot_groupsize=group)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
