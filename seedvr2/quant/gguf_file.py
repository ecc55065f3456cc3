"""Read GGUF checkpoints (standard library only) and write them (the optional ``gguf`` package).

Reading needs nothing beyond torch: ``gguf_reader`` parses the header, and tensor data is
memory-mapped (``mmap``, copy-on-write) and wrapped as torch tensors with no copy, so a loaded
model's weights stay file-backed until used. Mappings are made per *region* of consecutive tensors
(at most ``REGION_BYTES``, or one larger tensor), not per tensor: a region is unmapped once its
last tensor is dropped (block swap packing a block into its host master, or a move to the GPU),
so peak host RAM stays near one copy of the file; and the number of mappings (on Linux each holds
a file descriptor before Python 3.13) stays near ``MAX_REGIONS`` for any file, where one per
tensor would run a 7B file (1128 tensors) into the usual limit of 1024 open files. Quantized
tensors are returned as their raw bytes (``uint8 [rows..., row_bytes]``) with their ``GGMLType``;
F32/F16/BF16 tensors as float tensors.

A mapped file must not be truncated or rewritten *in place* while its tensors are alive: the
kernel then drops the mapped pages (copy-on-write ones included) and the next access kills the
process with SIGBUS, as with any mmap-based loader (safetensors, llama.cpp). Replacing the file by
rename (what ``seedvr2.models.download`` and the converter do) is safe: the mapping keeps the old
inode. A file truncated between reading its header and mapping it gives a ``ValueError`` naming it.

Conventions of the published SeedVR2 GGUF files (cmeka / AInVFX, city96 tooling; see
shared/guides/checkpoints.md 4.4): tensor names are the official state-dict keys, possibly under
``model.diffusion_model.``; shapes are stored in ggml order (innermost first) and are reversed here;
an INT32 array ``comfy.gguf.orig_shape.<name>`` overrides a tensor's logical shape;
``general.architecture`` is ``seedvr`` but any value is accepted (the model is recognised from the
tensor names and shapes, as for safetensors).

Writing (``GGUFOut``, the converter) uses the ``gguf`` package (``pip install
seedvr2-blockswap[gguf]``) and streams tensors one at a time: the tensor infos go first, then each
tensor's bytes as it is produced, so converting a 16 GB checkpoint needs one tensor in RAM.
"""
from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import GGUF_EXTRA_HINT as EXTRA_HINT
from .ggml import BY_ID, GGML_TYPES, GGMLType, row_bytes
from .gguf_reader import GGML_TYPE_NAMES, GGUFFormatError, parse_gguf

__all__ = ["GGUFTensorInfo", "require_gguf", "read_gguf_header", "read_gguf_tensors", "GGUFOut", "ORIG_SHAPE_KEY"]

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
REGION_BYTES = 64 << 20  # one mapping spans consecutive tensors up to this size (or one larger tensor)
MAX_REGIONS = 128  # for files over 8 GiB the region grows to file size / 128
INT64_MAX = 2**63 - 1  # torch sizes are int64


class GGUFMissingError(ImportError):
    """The optional ``gguf`` package (needed for writing) is not installed."""


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

    Raises ``ValueError`` naming the file and tensor for anything this loader cannot use (a damaged
    header, an unknown tensor type, a shape that is not whole blocks, data past the end of the file).
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        metadata, raw_infos = parse_gguf(path)
    except GGUFFormatError as exc:
        raise ValueError(f"{path}: not a readable GGUF file ({exc}); if it is a download, download it again") from None
    infos: dict[str, GGUFTensorInfo] = {}
    for index, t in enumerate(raw_infos):
        # Messages say "tensor #i", never the name: the file may be anything (not ours) at this point.
        which = f"tensor #{index + 1} of {len(raw_infos)}"
        qtype = BY_ID.get(t.type_id)
        if qtype is None:
            supported = ", ".join(GGML_TYPES)
            type_name = GGML_TYPE_NAMES.get(t.type_id, f"#{t.type_id} (unknown)")
            raise ValueError(f"{path}: {which} has GGML type {type_name}, which this loader "
                             f"does not support (supported: {supported})")
        shape = tuple(reversed(t.dims))
        override = metadata.get(ORIG_SHAPE_KEY + t.name)
        if override is not None:
            if not isinstance(override, list) or not all(type(d) is int and d >= 0 for d in override):
                raise ValueError(f"{path}: {which}: its {ORIG_SHAPE_KEY}* entry is not a list of sizes; "
                                 "the file is damaged")
            orig = tuple(override)
            if math.prod(orig) != math.prod(shape):
                raise ValueError(f"{path}: {which}: its {ORIG_SHAPE_KEY}* shape {list(orig)} does not hold "
                                 f"the {math.prod(shape)} stored values; the file is damaged")
            if qtype.quantized and (not orig or orig[-1] != shape[-1]):
                raise ValueError(f"{path}: {which}: a quantized tensor's rows cannot be reshaped "
                                 f"({list(shape)} -> {list(orig)})")
            shape = orig
        try:
            expected = math.prod(shape[:-1]) * row_bytes(qtype, shape[-1] if shape else 1)
        except ValueError as exc:
            raise ValueError(f"{path}: {which} {list(shape)}: {exc}") from None
        if t.offset + expected > size:
            raise ValueError(f"{path}: {which} ends past the end of the file ({size} bytes): the file is "
                             "truncated (interrupted download?); download it again")
        if any(d > INT64_MAX for d in shape):  # an empty tensor can get here with one
            raise ValueError(f"{path}: {which} has a dimension over 2^63 - 1 (shape {list(shape)}); the file is damaged")
        infos[t.name] = GGUFTensorInfo(t.name, shape, qtype, t.offset, expected)
    _refuse_overlaps(path, list(infos.values()))
    return infos, metadata


def _refuse_overlaps(path: Path, infos: list[GGUFTensorInfo]) -> None:
    """Two tensors sharing bytes would alias each other in memory (an in-place change of one changes
    the other) and let a small file declare a model many times its size: no GGUF writer does that."""
    end, previous = 0, 0
    for offset, nbytes, number in sorted((i.offset, i.nbytes, n) for n, i in enumerate(infos, 1) if i.nbytes):
        if offset < end:
            raise ValueError(f"{path}: tensors #{previous} and #{number} of {len(infos)} share bytes of the "
                             "file; the file is damaged")
        end, previous = offset + nbytes, number


def read_gguf_tensors(path: str | os.PathLike, infos: dict[str, GGUFTensorInfo], names: list[str] | None = None
                      ) -> dict[str, torch.Tensor]:
    """File-backed CPU tensors for ``names`` (all by default): float tensors for F32/F16/BF16, the raw
    bytes (``uint8 [rows..., row_bytes]``) for quantized types. Tensors are mapped copy-on-write in
    regions of consecutive tensors (module docstring), so nothing is read until used and dropping
    the tensors of a region unmaps it."""
    path = Path(path)
    wanted = [infos[name] for name in (names if names is not None else list(infos))]
    out = {info.name: torch.empty(info.shape, dtype=info.torch_dtype) for info in wanted if info.nbytes == 0}
    limit = max(REGION_BYTES, path.stat().st_size // MAX_REGIONS)
    with open(path, "rb") as f:
        for region in _regions(sorted((i for i in wanted if i.nbytes), key=lambda i: i.offset), limit):
            start = region[0].offset - region[0].offset % mmap.ALLOCATIONGRANULARITY
            end = max(i.offset + i.nbytes for i in region)
            try:
                mapped = mmap.mmap(f.fileno(), end - start, offset=start, access=mmap.ACCESS_COPY)
            except (ValueError, OSError) as exc:  # e.g. truncated since its header was read
                raise ValueError(f"{path}: cannot map its tensor data ({exc}); was the file changed or "
                                 "truncated while loading? Copy or download it again") from None
            for info in region:  # each tensor keeps the mapping alive; the last one dropped unmaps it
                tensor = torch.frombuffer(mapped, dtype=torch.uint8, count=info.nbytes, offset=info.offset - start)
                if info.torch_dtype != torch.uint8:
                    tensor = tensor.view(info.torch_dtype)
                out[info.name] = tensor.view(info.byte_shape if info.qtype.quantized else info.shape)
            del mapped
    return out


def _regions(ordered: list[GGUFTensorInfo], limit: int) -> list[list[GGUFTensorInfo]]:
    """Split tensors (in file order) into runs whose byte span stays within ``limit`` (a larger
    tensor is a run of its own)."""
    regions: list[list[GGUFTensorInfo]] = []
    for info in ordered:
        if regions and info.offset + info.nbytes - regions[-1][0].offset <= limit:
            regions[-1].append(info)
        else:
            regions.append([info])
    return regions


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
        import numpy as np  # the gguf package's own dependency

        nbytes = math.prod(shape[:-1]) * row_bytes(qtype, shape[-1])
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
