"""Checkpoint reading shared by every model of the pack (DiT, VAE) and by layout recognition.

Three entry points:

* ``read_header(path)``: names -> (dtype, shape), plus the safetensors metadata, without reading
  any tensor data from a ``.safetensors`` file.
* ``read_state_dict(path, keys=None, rename=None)``: CPU tensors in the file's own dtype (fp8 stays
  fp8). A ``.safetensors`` file is read tensor by tensor straight into preallocated tensors
  (``readinto``), so peak host RAM is one copy of the selected weights and nothing is memory-mapped
  (the page cache is not counted against the process). A ``.pth`` is opened with
  ``torch.load(mmap=True, weights_only=True)``: its tensors stay file-backed until used.
* ``load_into(module, state_dict, what=...)``: strict key/shape check with a readable report, then
  ``load_state_dict(strict=True, assign=True)`` so a module built on the meta device takes the
  tensors themselves (no second copy). Non-persistent buffers, absent from every file, are rebuilt
  by the module that owns them through ``materialize_buffers(device)`` (see ``load_into``).

Every problem with a file raises ``CheckpointError`` naming the file and what to do.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "read_header", "read_state_dict", "load_into", "SAFETENSORS_DTYPES",
           "GGUF_FORMAT_KEY", "GGUF_TYPE_KEY"]

GGUF_FORMAT_KEY = "seedvr2.format"
GGUF_TYPE_KEY = "seedvr2.gguf_type."

# safetensors dtype names (https://github.com/huggingface/safetensors, format spec) -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
if hasattr(torch, "float8_e8m0fnu"):
    SAFETENSORS_DTYPES["F8_E8M0"] = torch.float8_e8m0fnu

# Wrapper keys some trainers put around a state dict (checked in this order).
_PTH_WRAPPERS = ("state_dict", "ema", "model", "module")
# A safetensors header larger than this is not a real header (the 7B header is ~150 KB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_READ_CHUNK = 64 * 1024 * 1024
_REPORT_LIMIT = 10

KeyFilter = Callable[[str], bool] | Collection[str] | None
Rename = Callable[[str], str] | Mapping[str, str] | None


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file, the problem and the fix."""


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------

def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...]]], dict[str, str]]:
    """Return ``({name: (dtype, shape)}, metadata)`` of a ``.safetensors`` or ``.pth`` checkpoint.

    For safetensors only the JSON header is read. A ``.pth`` is opened memory-mapped (no tensor data
    is read) and has no metadata (``{}``). A ``.gguf`` (read without the ``gguf`` package) reports logical
    PyTorch-order shapes, dtype uint8 for quantized tensors, ``metadata[GGUF_FORMAT_KEY] == "gguf"``,
    the file's scalar metadata, and ``metadata[GGUF_TYPE_KEY + name]`` = the GGML type name
    (``"Q4_K"``, ...) of each quantized tensor.
    """
    path = _existing_file(path)
    if _is_safetensors(path):
        entries, metadata, _ = _safetensors_header(path)
        return {name: (dtype, shape) for name, (dtype, shape, _, _) in entries.items()}, metadata
    if _is_gguf(path):
        infos, gguf_meta = _gguf_header(path)
        metadata = {GGUF_FORMAT_KEY: "gguf"}
        metadata.update({k: str(v) for k, v in gguf_meta.items() if isinstance(v, (str, int, float))})
        metadata.update({GGUF_TYPE_KEY + n: i.qtype.name for n, i in infos.items() if i.qtype.quantized})
        return {name: (info.torch_dtype, info.shape) for name, info in infos.items()}, metadata
    state = _load_pth(path)
    return {name: (t.dtype, tuple(t.shape)) for name, t in state.items()}, {}


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[torch.dtype, tuple[int, ...], int, int]], dict[str, str], int]:
    """Parse and validate a safetensors header: name -> (dtype, shape, begin, end) absolute offsets."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: file is {size} bytes, too short to be a safetensors file "
                                  "(truncated download? download it again)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path}: not a valid safetensors file (header length {header_len} bytes "
                                  f"in a {size}-byte file); the file is truncated or is another format")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc}); "
                                  "the file is damaged, download it again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; the file is damaged")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
    for index, (name, info) in enumerate(header.items()):
        # Messages say "tensor #i", never the key: the file may be anything (not ours) at this point.
        which = f"tensor #{index + 1} of {len(header)}"
        try:
            dtype_name, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {which}; the file is damaged") from None
        dtype = SAFETENSORS_DTYPES.get(dtype_name)
        if dtype is None:
            raise CheckpointError(f"{path}: {which} has dtype {str(dtype_name)[:16]!r}, which this loader does not "
                                  f"support (supported: {', '.join(SAFETENSORS_DTYPES)})")
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: {which} ({dtype_name}, shape {list(shape)}) should take "
                                  f"{nbytes} bytes but its offsets [{begin}, {end}) give {end - begin}; the file is damaged")
        if data_start + end > size:
            raise CheckpointError(f"{path}: {which} ends at byte {data_start + end} but the file has only "
                                  f"{size} bytes: the file is truncated (interrupted download?); download it again")
        entries[name] = (dtype, shape, data_start + begin, data_start + end)
    return entries, {str(k): str(v) for k, v in metadata.items()}, size


# --------------------------------------------------------------------------------------------
# State dict
# --------------------------------------------------------------------------------------------

def read_state_dict(path: str | os.PathLike, keys: KeyFilter = None, rename: Rename = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint into CPU tensors of the file's dtype (fp8 stays fp8).

    ``keys`` selects what to read by the names *in the file*: a predicate, or a collection of names
    (names absent from the file are simply not returned; ``load_into`` reports them as missing).
    ``rename`` maps file names to returned names (a callable, or a mapping whose absent names stay
    unchanged), e.g. stripping ``model.diffusion_model.``. Two names renamed to the same target are
    refused.

    Memory: safetensors data is read straight into one preallocated tensor per entry, in file order,
    so peak RAM is the size of the selected tensors. ``.pth`` tensors are memory-mapped. ``.gguf``
    tensors are memory-mapped one by one (copy-on-write); quantized ones are returned as their raw
    bytes, uint8 ``[rows..., row_bytes]`` (see ``seedvr2.quant.gguf_file``).
    """
    path = _existing_file(path)
    selected = _key_predicate(keys)
    if _is_safetensors(path):
        entries, _, _ = _safetensors_header(path)
        names = [n for n in entries if selected(n)]
        out_names = _renamed(names, rename, path)
        result: dict[str, torch.Tensor] = {}
        names.sort(key=lambda n: entries[n][2])  # file order: sequential reads
        with open(path, "rb", buffering=0) as f:
            for name in names:
                dtype, shape, begin, end = entries[name]
                result[out_names[name]] = _read_tensor(f, path, name, dtype, shape, begin, end)
        return {out_names[n]: result[out_names[n]] for n in sorted(names)}
    if _is_gguf(path):
        infos, _ = _gguf_header(path)
        names = [n for n in infos if selected(n)]
        out_names = _renamed(names, rename, path)
        from .quant.gguf_file import read_gguf_tensors
        try:
            tensors = read_gguf_tensors(path, infos, names)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        return {out_names[n]: tensors[n] for n in sorted(names)}
    state = _load_pth(path)
    names = [n for n in state if selected(n)]
    out_names = _renamed(names, rename, path)
    return {out_names[n]: state[n] for n in names}


def _read_tensor(f, path: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...], begin: int, end: int) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=dtype)
    nbytes = end - begin
    if nbytes == 0:
        return tensor
    if sys.byteorder != "little":
        raise CheckpointError(f"{path}: safetensors data is little-endian and this machine is not")
    # A writable byte view of the tensor's own storage: the file is read into it with no staging copy.
    view = memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())).cast("B")
    f.seek(begin)
    done = 0
    while done < nbytes:
        got = f.readinto(view[done:done + _READ_CHUNK])
        if not got:
            raise CheckpointError(f"{path}: unexpected end of file while reading tensor {name!r}; "
                                  "the file is truncated, download it again")
        done += got
    return tensor


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(mmap=True, weights_only=True)``, unwrapped to a flat {name: tensor} dict."""
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise CheckpointError(f"{path}: cannot read this .pth file ({_first_line(exc)})") from None
        # Legacy (pre-zip) torch.save format cannot be memory-mapped: read it whole.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc2:  # noqa: BLE001 - any unpickling failure is a bad file for us
            raise CheckpointError(f"{path}: cannot read this .pth file ({_first_line(exc2)})") from None
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt archives alike
        raise CheckpointError(
            f"{path}: cannot read this .pth file safely ({type(exc).__name__}: {_first_line(exc)}). Only plain state "
            "dicts of tensors are accepted (weights_only=True); re-save it as a state dict or use a "
            ".safetensors file") from None
    if isinstance(obj, Mapping):
        for wrapper in _PTH_WRAPPERS:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor) but the file holds a "
                              f"{type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a state dict of tensors, but {len(bad)} entries are not tensors "
                              f"(e.g. {', '.join(map(repr, bad[:_REPORT_LIMIT]))})")
    return dict(obj)


# --------------------------------------------------------------------------------------------
# Loading into a module
# --------------------------------------------------------------------------------------------

def load_into(module: nn.Module, state_dict: dict[str, torch.Tensor], *, what: str,
              dtype: torch.dtype | None = None, keep_dtype: Callable[[str], bool] | None = None) -> nn.Module:
    """Strictly load ``state_dict`` into ``module`` (typically built on the meta device), in place.

    ``what`` names the model and file for messages, e.g. ``"SeedVR2 DiT from 'x.safetensors'"``.
    Raises ``CheckpointError`` listing missing, unexpected and mis-shaped keys (at most 10 of each,
    with counts). With ``dtype``, floating tensors are cast to it as they are assigned, except fp8
    tensors, which keep their dtype (they are upcast per layer at compute time). The tensors are
    assigned, not copied (``assign=True``), so the module ends up holding the state dict's storage;
    each cast replaces its entry in ``state_dict`` so the original is freed at once. Names for which
    ``keep_dtype(name)`` is true are never cast (quantization scales must stay float32).

    Non-persistent buffers are in no file. After assignment, any module whose own non-persistent
    buffers are still on the meta device must define ``materialize_buffers(device)``, which recreates
    them on ``device`` (the device of the loaded tensors); it is called once per such module.
    """
    expected = module.state_dict()
    problems = _mismatch_report(expected, state_dict)
    if problems:
        raise CheckpointError(f"{what}: the checkpoint does not match the model.\n{problems}")
    if dtype is not None:
        for name, tensor in state_dict.items():
            if keep_dtype is not None and keep_dtype(name):
                continue
            if tensor.is_floating_point() and tensor.dtype.itemsize > 1 and tensor.dtype != dtype:
                state_dict[name] = tensor.to(dtype)
    module.load_state_dict(state_dict, strict=True, assign=True)
    device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
    _materialize_buffers(module, device, what)
    return module


def _mismatch_report(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    missing = [k for k in expected if k not in given]
    unexpected = [_file_name_shown(k) for k in given if k not in expected]
    misshaped = [f"{k}: file {list(given[k].shape)}, model {list(expected[k].shape)}"
                 for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    mistyped = [f"{k}: file {given[k].dtype}, model expects a floating-point tensor"
                for k in expected if k in given and expected[k].is_floating_point()
                and not given[k].is_floating_point()]
    lines = []
    for label, items in (("missing from the file", missing), ("unexpected (not in the model)", unexpected),
                         ("wrong shape", misshaped), ("wrong dtype", mistyped)):
        if items:
            lines.append(f"  {len(items)} key(s) {label}:")
            lines += [f"    {item}" for item in items[:_REPORT_LIMIT]]
            if len(items) > _REPORT_LIMIT:
                lines.append(f"    ... and {len(items) - _REPORT_LIMIT} more")
    if lines:
        lines.append(f"  (model has {len(expected)} tensors, file has {len(given)}.) Check that the file is "
                     "the right model and variant, and that it downloaded completely.")
    return "\n".join(lines)


def _file_name_shown(name: str, limit: int = 120) -> str:
    """A key from the file as a report line shows it: as is when short and printable, else quoted
    and cut (a damaged or hostile file's key may hold newlines, NULs or a megabyte of text)."""
    if name.isprintable() and len(name) <= limit:
        return name
    text = repr(name)
    return text if len(text) <= limit else text[:limit] + "..."


def _materialize_buffers(module: nn.Module, device: torch.device, what: str) -> None:
    for name, sub in module.named_modules():
        meta_buffers = [b for b, t in sub.named_buffers(recurse=False)
                        if t is not None and t.is_meta and b in sub._non_persistent_buffers_set]
        if not meta_buffers:
            continue
        init = getattr(sub, "materialize_buffers", None)
        if init is None:
            raise RuntimeError(f"{what}: module {name or type(module).__name__} ({type(sub).__name__}) has "
                               f"non-persistent buffers {meta_buffers} left on the meta device and no "
                               "materialize_buffers(device) method to rebuild them")
        init(device)
    leftover = [n for n, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    leftover += [n for n, t in module.named_buffers() if t is not None and t.is_meta]
    if leftover:
        raise RuntimeError(f"{what}: tensors still on the meta device after loading: {leftover[:_REPORT_LIMIT]}")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin", ".gguf"):
        raise CheckpointError(f"{path}: unsupported checkpoint type {suffix!r}; expected .safetensors, .gguf or .pth.")
    return path


def _is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def _gguf_header(path: Path):
    """``read_gguf_header`` with its errors turned into ``CheckpointError`` (reading needs no extra)."""
    from .quant.gguf_file import read_gguf_header

    try:
        return read_gguf_header(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in (".safetensors", ".sft")


def _key_predicate(keys: KeyFilter) -> Callable[[str], bool]:
    if keys is None:
        return lambda name: True
    if callable(keys):
        return keys
    wanted = set(keys)
    return wanted.__contains__


def _renamed(names: list[str], rename: Rename, path: Path) -> dict[str, str]:
    if rename is None:
        return {n: n for n in names}
    mapped = {n: (rename(n) if callable(rename) else rename.get(n, n)) for n in names}
    seen: dict[str, str] = {}
    for src, dst in mapped.items():
        if dst in seen:
            raise CheckpointError(f"{path}: keys {seen[dst]!r} and {src!r} both map to {dst!r}; "
                                  "the file holds two copies of the same weight under different prefixes")
        seen[dst] = src
    return mapped
