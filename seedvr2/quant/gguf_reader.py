"""The GGUF container parsed with the standard library: no ``gguf`` package, no numpy.

Layout (GGUF v2/v3, little-endian, as specified in ggml's ``docs/gguf.md``)::

    b"GGUF", u32 version, u64 tensor_count, u64 metadata_count
    metadata_count x (string key, u32 value_type, value)
    tensor_count   x (string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml_type, u64 offset)
    padding to the alignment (metadata ``general.alignment``, default 32), then the tensor data;
    each tensor's offset is relative to the start of the data and a multiple of the alignment.

A string is a u64 byte count and UTF-8 bytes; an array is a u32 element type, a u64 count and the
elements. ``parse_gguf`` returns the metadata (Python values: int, float, bool, str, lists) and the
raw tensor infos with absolute offsets; ``seedvr2.quant.gguf_file`` turns those into shapes and
byte ranges and checks them against the types it can expand.

Hostile files: every count and length is checked against the bytes left in the file *before*
anything is allocated or read for it, so a crafted header cannot make the parser use more memory
than the file's size; arrays nest at most ``MAX_NESTING`` deep; at most ``MAX_ENTRIES`` metadata entries and tensors,
``MAX_STRING`` bytes per string, ``MAX_VALUES`` values parsed one by one; array elements beyond
``MAX_KEPT_VALUES`` in all are stepped over and their keys left out (nothing this loader uses is
that long). Memory and time are thus bounded by those limits, whatever the counts a file declares.
Errors are ``GGUFFormatError`` (a ``ValueError``) with messages that never quote the file's own
strings, since the file may be anything at this point.
"""
from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = ["GGUFFormatError", "RawTensorInfo", "parse_gguf", "GGML_TYPE_NAMES"]

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 2
MAX_KEPT_VALUES = 1 << 20  # array elements kept in all (more are stepped over, their keys left out)
MAX_ENTRIES = 1 << 16  # metadata entries and tensors (a 7B SeedVR2 file has 1128 tensors)
MAX_STRING = 1 << 20  # bytes of one name or string value
MAX_VALUES = 1 << 20  # metadata values parsed one by one (strings, nested arrays), kept or not: a few
# seconds at most (an LLM's tokenizer has ~2-5 x 10^5; 2^24 took over a minute on a 128 MiB file)
ALIGNMENT_KEY = "general.alignment"
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# ggml type ids, for naming the ones this loader does not expand (seedvr2.quant.ggml has the others).
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
                   10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
                   17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
                   24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
                   35: "TQ2_0", 39: "MXFP4"}


@functools.lru_cache(maxsize=64)
def _struct(fmt: str) -> struct.Struct:
    """A little-endian ``struct.Struct``, made once per format (the header has ~10^5 small reads)."""
    return struct.Struct("<" + fmt)


class GGUFFormatError(ValueError):
    """The file is not a GGUF file this parser can read (the message says why, not which file)."""


@dataclass(frozen=True)
class RawTensorInfo:
    """A tensor info as stored: ggml-order dims (innermost first), type id, absolute data offset."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int


class _Cursor:
    """Sequential reads from the header, refusing any read past the end of the file."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size, self.pos = f, size, 0
        self.budget = MAX_KEPT_VALUES  # array elements still to keep in memory
        self.steps = MAX_VALUES  # values (kept or not) still to parse one by one

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise GGUFFormatError("the header runs past the end of the file: the file is truncated or damaged")
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFFormatError("the file ended while reading its header (truncated?)")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n > self.left():
            raise GGUFFormatError("the header runs past the end of the file: the file is truncated or damaged")
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def unpack(self, fmt: str) -> tuple:
        st = _struct(fmt)
        return st.unpack(self.take(st.size))

    def u32(self) -> int:
        return self.unpack("I")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def count(self, min_item_bytes: int, what: str) -> int:
        """A u64 item count that the rest of the file can hold (each item at least ``min_item_bytes``)."""
        n = self.u64()
        if n * min_item_bytes > self.left():
            raise GGUFFormatError(f"the header declares {n} {what}, more than the file can hold: the file is damaged")
        return n

    def string(self) -> str:
        n = self.count(1, "string bytes")
        if n > MAX_STRING:
            raise GGUFFormatError(f"a string of {n} bytes in the header (at most {MAX_STRING} are read): "
                                  "not a model file this loader reads")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError("a name in the header is not valid UTF-8: the file is damaged") from None

    def value(self, vtype: int, depth: int = 0, keep: bool = True) -> Any:
        """The next value of type ``vtype``; with ``keep`` False it is only stepped over."""
        self.steps -= 1
        if self.steps < 0:
            raise GGUFFormatError(f"over {MAX_VALUES} metadata values: not a model file this loader reads")
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])[0] if keep else self.skip(struct.calcsize("<" + _SCALARS[vtype]))
        if vtype == _STRING:
            if keep:
                return self.string()
            return self.skip(self.count(1, "string bytes"))
        if vtype != _ARRAY:
            raise GGUFFormatError(f"unknown metadata value type {vtype}: the file is damaged")
        if depth >= MAX_NESTING:
            raise GGUFFormatError(f"metadata arrays nested more than {MAX_NESTING} deep: the file is damaged")
        etype = self.u32()
        if etype in _SCALARS:
            itemsize = struct.calcsize("<" + _SCALARS[etype])
            n = self.count(itemsize, "array values")
            if not keep or n > self.budget:
                self.skip(n * itemsize)
                return _SKIPPED
            self.budget -= n
            return list(self.unpack(f"{n}{_SCALARS[etype]}"))
        if etype not in (_STRING, _ARRAY):
            raise GGUFFormatError(f"unknown metadata value type {etype}: the file is damaged")
        n = self.count(8 if etype == _STRING else 12, "array values")
        keep = keep and n <= self.budget
        if keep:
            self.budget -= n
        items = [self.value(etype, depth + 1, keep) for _ in range(n)]
        return items if keep and _SKIPPED not in items else _SKIPPED


_SKIPPED = object()


def parse_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], list[RawTensorInfo]]:
    """``(metadata, tensor infos in file order)`` of a GGUF file; reads the header only."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        cur = _Cursor(f, size)
        if size < 24 or cur.take(4) != MAGIC:
            raise GGUFFormatError("no GGUF header (the file does not start with 'GGUF')")
        version = cur.u32()
        if version not in VERSIONS:
            if struct.unpack(">I", struct.pack("<I", version))[0] in VERSIONS:
                raise GGUFFormatError("a big-endian GGUF file: only little-endian files are supported")
            raise GGUFFormatError(f"GGUF version {version} is not supported (versions {VERSIONS[0]} and "
                                  f"{VERSIONS[-1]} are); convert the file again with current tools")
        n_tensors = cur.u64()
        n_meta = cur.count(8 + 4 + 1, "metadata entries")
        if max(n_tensors, n_meta) > MAX_ENTRIES:
            raise GGUFFormatError(f"the header declares {n_tensors} tensors and {n_meta} metadata entries (at most "
                                  f"{MAX_ENTRIES} each are read): not a model file this loader reads")
        metadata: dict[str, Any] = {}
        for _ in range(n_meta):
            key = cur.string()
            value = cur.value(cur.u32())
            if key in metadata:
                raise GGUFFormatError("a metadata key appears twice: the file is damaged")
            if value is not _SKIPPED:
                metadata[key] = value
        if n_tensors * (8 + 4 + 4 + 8) > cur.left():
            raise GGUFFormatError(f"the header declares {n_tensors} tensors, more than the file can hold: "
                                  "the file is damaged")
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        seen: set[str] = set()
        for index in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFFormatError(f"tensor #{index + 1} of {n_tensors} has {n_dims} dimensions "
                                      f"(1 to {MAX_DIMS} allowed): the file is damaged")
            dims = cur.unpack(f"{n_dims}Q")
            type_id, offset = cur.unpack("IQ")
            if name in seen:
                raise GGUFFormatError(f"tensor #{index + 1} of {n_tensors} repeats an earlier tensor's name: "
                                      "the file is damaged")
            seen.add(name)
            raw.append((name, dims, type_id, offset))
        alignment = metadata.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT)
        if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"{ALIGNMENT_KEY} must be a power of two: the file is damaged")
        data_start = -(-cur.pos // alignment) * alignment
    infos = []
    for index, (name, dims, type_id, offset) in enumerate(raw):
        if offset % alignment:
            raise GGUFFormatError(f"tensor #{index + 1} of {len(raw)} is not aligned to {alignment} bytes: "
                                  "the file is damaged")
        infos.append(RawTensorInfo(name, tuple(dims), type_id, data_start + offset))
    return metadata, infos
