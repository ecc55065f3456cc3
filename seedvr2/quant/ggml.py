"""GGML block formats, dequantized with torch ops on whatever device the bytes are on.

A GGML tensor of logical shape ``[..., n]`` is stored as rows of blocks: each block covers
``block_size`` consecutive values of the last axis in ``type_size`` bytes. Here the bytes are a
``uint8`` tensor of shape ``[..., n // block_size * type_size]``; ``dequantize`` returns float32
``[..., n]``. Every function mirrors the arithmetic of the ``gguf`` package's numpy reference op for
op, in float32, so the results are bitwise equal to it (tests/test_gguf.py checks random blocks of
every type). Layouts are those of ggml (``ggml-common.h``): little-endian fp16 scales, 4/5/6-bit
codes packed low nibble first, K-quants in 256-value super-blocks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GGML_TYPES", "GGMLType", "dequantize", "row_bytes"]

QK_K = 256


class GGMLType:
    """One GGML tensor type: its numeric id in GGUF files, block size (values) and type size (bytes)."""

    def __init__(self, name: str, type_id: int, block_size: int, type_size: int,
                 dequant: Callable[[torch.Tensor], torch.Tensor]):
        self.name, self.type_id, self.block_size, self.type_size, self._dequant = name, type_id, block_size, type_size, dequant

    @property
    def quantized(self) -> bool:
        return self.name not in ("F32", "F16", "BF16")

    def __repr__(self) -> str:
        return f"GGMLType({self.name})"


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Bytes [n, 2] (little-endian fp16) -> float32 [n, 1]."""
    return b.contiguous().view(torch.float16).to(torch.float32)


_SHIFTS: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def _bits(b: torch.Tensor, shifts: list[int], mask: int) -> torch.Tensor:
    """``(b[..., None, :] >> shift) & mask`` for each shift, stacked on a new axis -2 (uint8)."""
    key = (tuple(shifts), b.device)
    s = _SHIFTS.get(key)
    if s is None:  # made once per device: no host-to-device copy inside a forward
        s = _SHIFTS[key] = torch.tensor(shifts, dtype=torch.uint8, device=b.device).view(len(shifts), 1)
    return (b.unsqueeze(-2) >> s) & mask


def _deq_f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


def _deq_f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).to(torch.float32)


def _deq_bf16(blocks: torch.Tensor) -> torch.Tensor:
    return (blocks.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)


def _deq_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    return blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32) * d


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] packed bytes -> [n, 32] codes: the 16 low nibbles, then the 16 high ones."""
    return _bits(qs, [0, 4], 0x0F).reshape(qs.shape[0], -1)


def _deq_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    q = _nibbles(blocks[:, 2:]).to(torch.int8) - 8
    return d * q.to(torch.float32)


def _deq_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    return d * _nibbles(blocks[:, 4:]).to(torch.float32) + m


def _high_bits_32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian uint32 -> its 32 bits [n, 32], bit 0 first."""
    return _bits(qh, list(range(8)), 1).transpose(-1, -2).reshape(qh.shape[0], 32)


def _deq_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    q = (_nibbles(blocks[:, 6:]) | (_high_bits_32(blocks[:, 2:6]) << 4)).to(torch.int8) - 16
    return d * q.to(torch.float32)


def _deq_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    q = _nibbles(blocks[:, 8:]) | (_high_bits_32(blocks[:, 4:8]) << 4)
    return d * q.to(torch.float32) + m


def _deq_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs = blocks[:, :16], blocks[:, 16:80]
    d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    dl = (d * (scales & 0x0F).to(torch.float32)).view(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).view(n, 16, 1)
    q = _bits(qs.reshape(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, scales, d = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108], _f16(blocks[:, 108:110])
    low = _bits(scales[:, :8], [0, 4], 0xFF).reshape(n, 16)
    high = _bits(scales[:, 8:], [0, 2, 4, 6], 0xFF).reshape(n, 16)
    sc = ((low & 0x0F) | ((high & 0x03) << 4)).to(torch.int8) - 32
    dl = (d * sc.to(torch.float32)).view(n, 16, 1)
    ql = _bits(qs.reshape(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16)
    qh = _bits(hmask.reshape(n, 1, 32), list(range(8)), 1).reshape(n, 16, 16) ^ 1
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and 8 six-bit mins packed in 12 bytes (Q4_K, Q5_K)."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _deq_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc.to(torch.float32)).view(n, 8, 1)
    ml = (dmin * mn.to(torch.float32)).view(n, 8, 1)
    q = _bits(blocks[:, 16:].reshape(n, 4, 32), [0, 4], 0x0F).reshape(n, 8, 32).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    qh, qs = blocks[:, 16:48], blocks[:, 48:]
    dl = (d * sc.to(torch.float32)).view(n, 8, 1)
    ml = (dmin * mn.to(torch.float32)).view(n, 8, 1)
    ql = _bits(qs.reshape(n, 4, 32), [0, 4], 0x0F).reshape(n, 8, 32)
    hi = _bits(qh.reshape(n, 1, 32), list(range(8)), 1).reshape(n, 8, 32)
    q = (ql | (hi << 4)).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh, scales, d = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208], _f16(blocks[:, 208:210])
    dl = (d * scales.contiguous().view(torch.int8).to(torch.float32)).view(n, 16, 1)
    lo = _bits(ql.reshape(n, 2, 64), [0, 4], 0x0F).reshape(n, 8, 32)
    hi = _bits(qh.reshape(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 8, 32)
    q = ((lo | (hi << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


# name -> type (ids: ggml's enum ggml_type, as written in GGUF tensor infos).
GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("F32", 0, 1, 4, _deq_f32),
    GGMLType("F16", 1, 1, 2, _deq_f16),
    GGMLType("Q4_0", 2, 32, 18, _deq_q4_0),
    GGMLType("Q4_1", 3, 32, 20, _deq_q4_1),
    GGMLType("Q5_0", 6, 32, 22, _deq_q5_0),
    GGMLType("Q5_1", 7, 32, 24, _deq_q5_1),
    GGMLType("Q8_0", 8, 32, 34, _deq_q8_0),
    GGMLType("Q2_K", 10, QK_K, 84, _deq_q2_k),
    GGMLType("Q3_K", 11, QK_K, 110, _deq_q3_k),
    GGMLType("Q4_K", 12, QK_K, 144, _deq_q4_k),
    GGMLType("Q5_K", 13, QK_K, 176, _deq_q5_k),
    GGMLType("Q6_K", 14, QK_K, 210, _deq_q6_k),
    GGMLType("BF16", 30, 1, 2, _deq_bf16),
)}
BY_ID: dict[int, GGMLType] = {t.type_id: t for t in GGML_TYPES.values()}


def row_bytes(qtype: GGMLType, n: int) -> int:
    """Bytes of ``n`` consecutive values (``n`` must be a multiple of the block size)."""
    if n % qtype.block_size:
        raise ValueError(f"{qtype.name}: a row of {n} values is not a whole number of {qtype.block_size}-value blocks")
    return n // qtype.block_size * qtype.type_size


def dequantize(raw: torch.Tensor, qtype: GGMLType) -> torch.Tensor:
    """uint8 ``[..., k * type_size]`` -> float32 ``[..., k * block_size]``, on ``raw``'s device."""
    if raw.dtype != torch.uint8:
        raise TypeError(f"{qtype.name}: expected the raw bytes as a uint8 tensor, got {raw.dtype}")
    if raw.shape[-1] % qtype.type_size:
        raise ValueError(f"{qtype.name}: last dimension {raw.shape[-1]} is not a multiple of the {qtype.type_size}-byte block")
    lead = raw.shape[:-1]
    blocks = raw.reshape(-1, qtype.type_size)
    values = qtype._dequant(blocks)
    return values.reshape(*lead, raw.shape[-1] // qtype.type_size * qtype.block_size)
