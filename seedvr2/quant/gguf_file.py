"""Read and write GGUF checkpoints (the optional ``gguf`` extra: ``pip install seedvr2-blockswap[gguf]``).

Reading: the ``gguf`` package parses the header (its reader memory-maps the file but only the
header pages are touched, and the reader is dropped at once). Each tensor is then mapped on its own
(``numpy.memmap``, copy-on-write) and wrapped as a torch tensor with no copy, so a loaded model's
weights stay file-backed until used, and a tensor whose last user lets go (block swap packing it into
its host master, or a move to the GPU) unmaps its pages: peak host RAM stays near one copy of the
file. Quantized tensors are returned as their raw bytes (``uint8 [rows..., row_bytes]``) with their
``GGMLType``; F32/F16/BF16 tensors as ordinary float tensors.

Conventions of the published SeedVR2 GGUF files (cmeka / AInVFX, city96 tooling; see
shared/guides/checkpoints.md 4.4): tensor names are the official state-dict keys, possibly under
``model.diffusion_model.``; shapes are stored in ggml order (innermost first) and are reversed here;
an INT32 array ``comfy.gguf.orig_shape.<name>`` overrides a tensor's logical shape;
``general.architecture`` is ``seedvr`` but any value is accepted (the model is recognised from the
tensor names and shapes, as for safetensors).

Writing (``GGUFOut``) streams tensors one at a time: the tensor infos go first, then each tensor's
bytes as it is produced, so converting a 16 GB checkpoint needs one tensor in RAM, not the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import GGUF_EXTRA_HINT as EXTRA_HINT
from .ggml import BY_ID, GGML_TYPES, GGMLType, row_bytes

__all__ = ["GGUFTensorInfo", "require_gguf", "read_gguf_header", "read_gguf_tensors", "GGUFOut", "ORIG_SHAPE_KEY"]

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."


class GGUFMissingError(ImportError):
    """The optional ``gguf`` package is not installed."""


def require_gguf() -> Any:
    """Import the ``gguf`` package, or raise an error naming the extra that provides it."""
    try:
        import gguf
    except ImportError:
        raise GGUFMissingError(EXTRA_HINT) from None
    return gguf


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: logical (PyTorch-order) shape, type, absolute byte range."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLType
    offset: int
    nbytes: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """Shape of the raw bytes as stored here: ``[rows..., row_bytes]``."""
        if not self.shape:
            return (self.nbytes,)
        return (*self.shape[:-1], row_bytes(self.qtype, self.shape[-1]))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of the tensor ``read_gguf_tensors`` returns (uint8 for quantized data)."""
        return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(self.qtype.name, torch.uint8)


def read_gguf_header(path: str | os.PathLike) -> tuple[dict[str, GGUFTensorInfo], dict[str, Any]]:
    """``({name: info}, {metadata key: value})`` of a GGUF file; no tensor data is read.

    Raises ``ValueError`` naming the file and tensor for anything this loader cannot use (an unknown
    tensor type, a shape that is not whole blocks, data past the end of the file).
    """
    gguf = require_gguf()
    path = Path(path)
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - the reader raises bare ValueError/struct errors on bad files
        raise ValueError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc}); "
                         "the file is damaged or truncated, download it again") from None
    try:
        metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                metadata[key] = field.contents()
            except Exception:  # noqa: BLE001 - a value we cannot decode is not one we use
                continue
        infos: dict[str, GGUFTensorInfo] = {}
        for index, t in enumerate(reader.tensors):
            # Messages say "tensor #i", never the name: the file may be anything (not ours) at this point.
            which = f"tensor #{index + 1} of {len(reader.tensors)}"
            qtype = BY_ID.get(int(t.tensor_type))
            if qtype is None:
                supported = ", ".join(GGML_TYPES)
                raise ValueError(f"{path}: {which} has GGML type {t.tensor_type.name}, which this loader "
                                 f"does not support (supported: {supported})")
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            override = metadata.get(ORIG_SHAPE_KEY + t.name)
            if override is not None:
                orig = tuple(int(d) for d in override)
                if int(np.prod(orig)) != int(np.prod(shape)):
                    raise ValueError(f"{path}: {which}: its {ORIG_SHAPE_KEY}* shape {list(orig)} does not hold "
                                     f"the {int(np.prod(shape))} stored values; the file is damaged")
                if qtype.quantized and orig[-1] != shape[-1]:
                    raise ValueError(f"{path}: {which}: a quantized tensor's rows cannot be reshaped "
                                     f"({list(shape)} -> {list(orig)})")
                shape = orig
            try:
                expected = (int(np.prod(shape[:-1])) if len(shape) > 1 else 1) * row_bytes(qtype, shape[-1] if shape else 1)
            except ValueError as exc:
                raise ValueError(f"{path}: {which} {list(shape)}: {exc}") from None
            if expected != int(t.n_bytes):
                raise ValueError(f"{path}: {which} ({qtype.name}, {list(shape)}) should take {expected} bytes, "
                                 f"the file says {int(t.n_bytes)}; the file is damaged")
            if int(t.data_offset) + expected > size:
                raise ValueError(f"{path}: {which} ends past the end of the file ({size} bytes): the file is "
                                 "truncated (interrupted download?); download it again")
            infos[t.name] = GGUFTensorInfo(t.name, shape, qtype, int(t.data_offset), expected)
    finally:
        # Drop the whole-file mapping now: only the header pages were touched.
        mm = getattr(reader.data, "_mmap", None)
        del reader
        if mm is not None:
            try:
                mm.close()
            except (BufferError, ValueError):
                pass
    return infos, metadata


def read_gguf_tensors(path: str | os.PathLike, infos: dict[str, GGUFTensorInfo], names: list[str] | None = None
                      ) -> dict[str, torch.Tensor]:
    """File-backed CPU tensors for ``names`` (all by default): float tensors for F32/F16/BF16, the raw
    bytes (``uint8 [rows..., row_bytes]``) for quantized types. Each tensor maps its own pages
    (copy-on-write), so nothing is read until used and dropping a tensor unmaps it."""
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    for name in (names if names is not None else list(infos)):
        info = infos[name]
        if info.nbytes == 0:
            out[name] = torch.empty(info.shape, dtype=info.torch_dtype)
            continue
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=info.offset, shape=(info.nbytes,))
        tensor = torch.from_numpy(raw)
        if info.torch_dtype != torch.uint8:
            tensor = tensor.view(info.torch_dtype)
        out[name] = tensor.view(info.byte_shape if info.qtype.quantized else info.shape)
    return out


class GGUFOut:
    """Stream a GGUF file: declare every tensor (``add``), then ``write`` their data in the same order.

    The file is written to ``<path>.partial`` and renamed on ``close()``, so an interrupted
    conversion never leaves a half-written file under the final name.
    """

    def __init__(self, path: str | os.PathLike, arch: str = "seedvr"):
        gguf = require_gguf()
        self._gguf = gguf
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._writer = gguf.GGUFWriter(self.partial, arch)
        self._order: list[tuple[str, int]] = []
        self._started = False

    def add_metadata(self, key: str, value: str) -> None:
        self._writer.add_string(key, value)

    def add(self, name: str, shape: tuple[int, ...], qtype: GGMLType) -> None:
        """Declare tensor ``name`` of logical ``shape`` stored as ``qtype``."""
        nbytes = (int(np.prod(shape[:-1])) if len(shape) > 1 else 1) * row_bytes(qtype, shape[-1])
        if qtype.name in ("F32", "F16"):
            self._writer.add_tensor_info(name, list(shape), np.dtype(np.float32 if qtype.name == "F32" else np.float16),
                                         nbytes)
        else:
            byte_shape = (*shape[:-1], row_bytes(qtype, shape[-1]))
            self._writer.add_tensor_info(name, list(byte_shape), np.dtype(np.uint8), nbytes,
                                         raw_dtype=self._gguf.GGMLQuantizationType(qtype.type_id))
        self._order.append((name, nbytes))

    def write(self, name: str, data: torch.Tensor) -> None:
        """Write the next declared tensor: its bytes as a CPU tensor (raw uint8, or float32/float16)."""
        if not self._started:
            self._writer.write_header_to_file()
            self._writer.write_kv_data_to_file()
            self._writer.write_ti_data_to_file()
            self._started = True
        expected, nbytes = self._order.pop(0)
        if expected != name:
            raise RuntimeError(f"GGUF writer: tensor {name!r} written out of order (expected {expected!r})")
        array = data.detach().contiguous().cpu().view(torch.uint8).numpy()
        if array.nbytes != nbytes:
            raise RuntimeError(f"GGUF writer: tensor {name!r} has {array.nbytes} bytes, declared {nbytes}")
        self._writer.write_tensor_data(array.reshape(-1))

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        if self._order:
            raise RuntimeError(f"GGUF writer: {len(self._order)} declared tensors were not written")
        if not self._started:
            self._writer.write_header_to_file()
            self._writer.write_kv_data_to_file()
            self._writer.write_ti_data_to_file()
        self._writer.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop the partial file (after an error)."""
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)
