"""``python -m seedvr2 convert IN OUT --to {f16,bf16,q8_0,fp8}``: a smaller SeedVR2 DiT file from one you have.

Targets (shared/guides/checkpoints.md 4.4 and 5.4 describe the layouts written):

| --to   | OUT        | block matrices (``blocks.N.*.weight``, 2-D)               | everything else |
|--------|------------|-----------------------------------------------------------|-----------------|
| f16    | .gguf / .safetensors | F16                                              | F16             |
| bf16   | .gguf / .safetensors | BF16                                             | BF16            |
| q8_0   | .gguf      | Q8_0 (when in_features % 32 == 0, else F16)                | F16             |
| fp8    | .safetensors | float8_e4m3fn + per-tensor ``weight_scale`` (amax/448) + ``.comfy_quant`` marker (ComfyUI scaled fp8) | F16 |

GGUF output uses the published files' conventions: official key names, ``general.architecture``
``seedvr``. Conditioning tensors of Comfy-Org files are kept (bf16) in safetensors output and dropped
from GGUF. The input may be any DiT file this pack loads (quantized inputs are expanded first).

Tensors are converted one at a time and streamed out, so RAM stays near one tensor; OUT is written
to ``OUT.partial`` and renamed when complete, never overwritten unless ``--force``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_header, read_state_dict
from .quant.plan import QuantPlan, plan_quantized_layers

__all__ = ["main", "convert", "TARGETS"]

TARGETS = ("f16", "bf16", "q8_0", "fp8")
_BLOCK_MATRIX = re.compile(r"^blocks\.\d+\..+\.weight$")
_PREFIX = "model.diffusion_model."
_CONDITIONING = ("positive_conditioning", "negative_conditioning")
_FP8_MAX = 448.0


class ConvertError(ValueError):
    """The conversion cannot be done; the message says why and what to do."""


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, force: bool = False) -> dict[str, int]:
    """Convert DiT checkpoint ``src`` to ``dst`` in format ``to``; returns counts per stored type."""
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise ConvertError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    out_kind = dst.suffix.lower()
    allowed = {"f16": (".gguf", ".safetensors"), "bf16": (".gguf", ".safetensors"), "q8_0": (".gguf",),
               "fp8": (".safetensors",)}[to]
    if out_kind not in allowed:
        raise ConvertError(f"{dst}: --to {to} writes {' or '.join(allowed)} files; name the output accordingly")
    if not src.is_file():
        raise ConvertError(f"{src}: no such file")
    if dst.exists() and not force:
        raise ConvertError(f"{dst} already exists; pass --force to replace it")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConvertError(f"{dst}: the output cannot be the input file")
    source = _read_source(src)
    plan = [(key, file_key, _target(key, source.shapes[key], to, out_kind)) for key, file_key in source.names]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if out_kind == ".gguf":
        _write_gguf(source, dst, plan)
    else:
        _write_safetensors(source, dst, plan)
    counts: dict[str, int] = {}
    for _, _, target in plan:
        counts[target] = counts.get(target, 0) + 1
    return counts


@dataclass
class _Source:
    """The DiT part of an input file: its tensors, their logical shapes, how its quantized layers are stored."""

    path: Path
    names: list[tuple[str, str]]          # (model key, file key); quantized layers: their weight only
    shapes: dict[str, tuple[int, ...]]    # model key -> logical shape
    quant: QuantPlan
    file_key_of: dict[str, str]           # model key -> file key (scales included)


def _read_source(src: Path) -> _Source:
    from .dit.loading import _dit_key_names, detect_dit_config

    header, metadata = read_header(src)
    rename = _dit_key_names(header, metadata, src)
    quant = plan_quantized_layers(src, header, metadata, rename)
    shapes = {rename[n]: tuple(header[n][1]) for n in rename}
    shapes.update(quant.logical_shapes)
    detect_dit_config(shapes, source=str(src))  # refuses what is not a SeedVR2 DiT
    stored_only = {m for m in rename.values() if quant.keeps_dtype(m) and not m.endswith(".weight")}
    names = sorted((m, f) for f, m in rename.items() if m not in stored_only)
    return _Source(src, names, shapes, quant, {m: f for f, m in rename.items()})


def _target(key: str, shape: tuple[int, ...], to: str, out_kind: str) -> str:
    if key in _CONDITIONING:
        return "skip" if out_kind == ".gguf" else "BF16"
    if to in ("f16", "bf16"):
        return to.upper()
    if _BLOCK_MATRIX.match(key) and len(shape) == 2:
        if to == "q8_0" and shape[1] % 32 == 0:
            return "Q8_0"
        if to == "fp8":
            return "FP8"
    return "F16"


def _float_tensors(source: _Source, plan: list[tuple[str, str, str]]) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(model key, target, float32 tensor) in plan order, one tensor in memory at a time; quantized
    source layers are expanded with their scheme.

    ``.gguf`` and ``.pth`` inputs are memory-mapped, so they are opened once (nothing is read until
    used); ``.safetensors`` tensors are read one by one."""
    mapped = None
    if source.path.suffix.lower() not in (".safetensors", ".sft"):
        mapped = read_state_dict(source.path, keys=set(source.file_key_of.values()))

    def read(keys: list[str]) -> dict[str, torch.Tensor]:
        return {k: mapped[k] for k in keys} if mapped is not None else read_state_dict(source.path, keys=keys)

    for model_key, file_key, target in plan:
        if target == "skip":
            continue
        layer = model_key.rpartition(".")[0]
        if model_key.endswith(".weight") and layer in source.quant.schemes:
            scheme = source.quant.schemes[layer]
            out_f, in_f = source.shapes[model_key]
            keys = {n: source.file_key_of[f"{layer}.{n}"] for n in scheme.tensors(out_f, in_f)}
            raw = read(list(keys.values()))
            stored = {n: raw[k] for n, k in keys.items()}
            yield model_key, target, scheme.dequantize(stored, out_f, in_f).to(torch.float32)
            continue
        yield model_key, target, read([file_key])[file_key].to(torch.float32)


def _write_gguf(source: _Source, dst: Path, plan) -> None:
    from .quant.ggml import GGML_TYPES
    from .quant.gguf_file import GGUFOut, require_gguf

    gguf = require_gguf()
    out = GGUFOut(dst)
    try:
        out.add_metadata("general.name", source.path.stem)
        for key, _, target in plan:
            if target != "skip":
                out.add(key, source.shapes[key], GGML_TYPES[target])
        for key, target, tensor in _float_tensors(source, plan):
            if target == "Q8_0":
                data = torch.from_numpy(gguf.quantize(tensor.numpy(), gguf.GGMLQuantizationType.Q8_0))
            elif target == "BF16":
                data = tensor.to(torch.bfloat16)
            else:
                data = tensor.to(torch.float16)
            out.write(key, data)
        out.close()
    except BaseException:
        out.abort()
        raise


def _write_safetensors(source: _Source, dst: Path, plan) -> None:
    """Streamed safetensors: header computed from the plan, then each tensor's bytes in order."""
    entries: list[tuple[str, str, tuple[int, ...], int]] = []  # name, dtype name, shape, nbytes
    for key, _, target in plan:
        shape = source.shapes[key]
        numel = 1
        for d in shape:
            numel *= d
        if target == "FP8":
            layer = key[: -len(".weight")]
            marker = json.dumps({"format": "float8_e4m3fn"}).encode()
            entries += [(key, "F8_E4M3", shape, numel), (layer + ".weight_scale", "F32", (), 4),
                        (layer + ".comfy_quant", "U8", (len(marker),), len(marker))]
        elif target != "skip":
            name = {"F16": "F16", "BF16": "BF16"}[target]
            entries.append((key, name, shape, numel * 2))
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    partial = dst.with_name(dst.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for key, target, tensor in _float_tensors(source, plan):
                if target == "FP8":
                    amax = tensor.abs().max().clamp_min(1e-12)
                    scale = (amax / _FP8_MAX).to(torch.float32)
                    q = (tensor / scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
                    f.write(_bytes(q))
                    f.write(_bytes(scale.reshape(())))
                    f.write(json.dumps({"format": "float8_e4m3fn"}).encode())
                else:
                    f.write(_bytes(tensor.to(torch.bfloat16 if target == "BF16" else torch.float16)))
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seedvr2 convert",
                                     description="Convert a SeedVR2 DiT checkpoint to a smaller format.")
    parser.add_argument("input", help="DiT checkpoint (.safetensors, .pth or .gguf)")
    parser.add_argument("output", help="output file (.gguf for f16/bf16/q8_0, .safetensors for f16/bf16/fp8)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="stored format of the output")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.input, args.output, args.to, force=args.force)
    except (ConvertError, CheckpointError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()) if t != "skip")
    print(f"wrote {args.output} ({summary})")
    return 0
