"""`--resume DIR`: finished batches kept on disk, so an interrupted run restarts where it stopped.

What is stored: each batch's DiT result, the x0 latent (t, h, w, 16) float32. It is exact (the
very tensor the decode would get) and the smallest form of a finished batch: about Hc*Wc/4 bytes
per frame against 3*H*W for uint8 output frames (12x smaller), and it skips the expensive part
(encode and DiT) on resume; the decode is re-run, which is deterministic.

Layout of DIR (created if missing; nothing else is ever written there):
* `manifest.json`: {"format": FORMAT, "key": {...}}: the key names the input (SHA-256 of the whole
  file: an input edited in the middle is another input),
  the settings, the models and every other option that changes the stored latents. A resume
  whose key differs is refused, naming the fields that differ.
* `batch_NNNNNN.safetensors`: one per finished batch, tensor "x0", metadata: index, frames, and
  the SHA-256 of the tensor's bytes. Written to a temporary file in DIR and renamed (atomic).

Trust: names are built here from batch indices, never read from the folder (no path from the
folder reaches a file operation); a stored file is used only if it is a regular file (not a
link), parses as safetensors (no pickle), has the expected shape and dtype, and matches its hash;
anything else is logged and recomputed. The manifest is read only if it is a small regular file
(under MANIFEST_MAX_BYTES); names and values from it reach messages JSON-escaped. It is created
without replacing (a hard link): of two runs starting on one new folder, the second checks the
first's manifest (and is refused if its run differs). Temporary `.partial-*.tmp` files (a
write cut short by a killed run) do not make a folder foreign. A folder that exists, is not empty and has no manifest
is refused (it is not ours: we never write into it); so is a file given as DIR, or a folder we
cannot write.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..files import move_no_overwrite

log = logging.getLogger("seedvr2")

FORMAT = "seedvr2-resume/1"
MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"  # temporary files of writes in progress (or cut short by a killed run)
MANIFEST_MAX_BYTES = 1 << 20  # ours are a few KB; a bigger one is not ours (and is not read into memory)


class ResumeError(ValueError):
    """The resume folder cannot be used; the message names it and says why."""


def _canonical(value):
    """JSON-friendly, order-independent form of a key (tuples -> lists, dtypes -> str)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def file_identity(path: str | os.PathLike, sample: int = 16 << 20) -> dict:
    """A file's identity without reading all of it: size and SHA-256 of its first and last
    `sample` bytes (the whole file when smaller). Independent of its name, folder and mtime,
    so a copy on another machine resumes too. Not exact (a change in the middle goes unseen):
    fit for model files (multi-GB, replaced whole, never edited in place); inputs use
    `content_identity`."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(sample))
        if size > 2 * sample:
            f.seek(size - sample)
        digest.update(f.read(sample))
    return {"size": size, "sha256_head_tail": digest.hexdigest()}


def content_identity(path: str | os.PathLike, chunk: int = 4 << 20) -> dict:
    """A file's exact identity: size and SHA-256 of all its bytes, read in chunks (bounded memory).

    Used for the input of a resumed run: an input edited in the middle keeps its size, head and
    tail, so `file_identity` would let a resume mix batches of the old video into the new one.
    Reading the whole input costs far less than upscaling it (about 0.1-0.3 s per 100 MB here)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


class ResumeStore:
    """Finished batches of one run in a folder; see the module docstring.

    `ResumeStore(path, key)` checks (or creates) the folder; the key (any JSON-able mapping:
    what the caller knows identifies the run, e.g. model files) is completed by the pipeline
    with `bind(more)` (settings, input, frame shape), which checks the manifest against the
    whole key, or writes it into a new folder. Only a bound store loads or saves batches.
    """

    def __init__(self, path: str | os.PathLike, key: Mapping | None = None):
        self.path = Path(path)
        self.key = _canonical(key or {})
        self.bound = False
        self._check_folder()

    def bind(self, more: Mapping) -> "ResumeStore":
        """A bound store for the key completed with `more` (refused if the folder holds another run)."""
        store = ResumeStore(self.path, {**self.key, **_canonical(more)})
        store._check_manifest()
        store.bound = True
        return store

    # --- opening --------------------------------------------------------------------------------

    def _check_folder(self) -> None:
        p = self.path
        if p.is_symlink() and not p.is_dir():
            raise ResumeError(f"--resume {p}: a link to something that is not a folder")
        if p.exists() and not p.is_dir():
            raise ResumeError(f"--resume {p} is a file, not a folder; give a folder (it is created if missing)")
        if not p.exists():
            parent = p.parent
            if not parent.is_dir():
                raise ResumeError(f"--resume {p}: the folder {parent} does not exist; create it first")
            try:
                p.mkdir()
            except OSError as exc:
                raise ResumeError(f"--resume {p}: cannot create the folder ({exc.strerror or exc})") from None
        if not os.access(p, os.W_OK | os.X_OK):
            raise ResumeError(f"--resume {p}: the folder is not writable")

    def _check_manifest(self) -> None:
        manifest = self.path / MANIFEST
        wanted = {"format": FORMAT, "key": self.key}
        if not manifest.exists() and not manifest.is_symlink():
            if any(not _is_partial(p.name) for p in self.path.iterdir()):
                raise ResumeError(f"--resume {self.path}: the folder is not empty and has no {MANIFEST}, so it is not "
                                  "a seedvr2 resume folder; use an empty or new folder")
            if self._write_bytes(manifest, json.dumps(wanted, indent=1, sort_keys=True).encode(), replace=False):
                return
            # another process (a second run on the same folder) wrote its manifest meanwhile: check it
        try:
            info = os.lstat(manifest)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > MANIFEST_MAX_BYTES:
                raise ValueError(f"{info.st_size} bytes, ours are under {MANIFEST_MAX_BYTES}")
            found = json.loads(manifest.read_text(encoding="utf-8"))
            if not isinstance(found, dict):
                raise ValueError("not a JSON object")
            old = _flat(found.get("key") if isinstance(found.get("key"), dict) else {})
        except RecursionError:
            raise ResumeError(f"--resume {self.path}: {MANIFEST} is corrupt (nested too deeply); use a new folder, "
                              "or delete this one to start over") from None
        except (OSError, ValueError) as exc:
            raise ResumeError(f"--resume {self.path}: {MANIFEST} is unreadable or corrupt ({exc}); use a new folder, "
                              "or delete this one to start over") from None
        if found.get("format") != FORMAT:
            raise ResumeError(f"--resume {self.path}: {MANIFEST} has format {found.get('format')!r}, expected "
                              f"{FORMAT!r}; use a new folder")
        new = _flat(self.key)
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if differ:
            details = "; ".join(f"{_short(k)[1:-1]}: stored {_short(old.get(k))}, now {_short(new.get(k))}" for k in differ[:6])
            raise ResumeError(f"--resume {self.path} holds batches of a different run ({details}). Rerun with the same "
                              "input and settings, or use a new folder (or delete this one) to start over")

    # --- batches --------------------------------------------------------------------------------

    def batch_path(self, index: int) -> Path:
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"batch index must be a whole number >= 0, got {index!r}")
        return self.path / f"batch_{index:06d}.safetensors"

    def load(self, index: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The stored x0 of batch `index` if present and intact, else None (damage is logged)."""
        from safetensors import safe_open

        self._check_bound()
        path = self.batch_path(index)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(mode):
                raise ValueError("not a regular file")
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                header = f.get_slice("x0")  # shape and dtype from the header: a huge tensor is never read
                found = (header.get_dtype(), tuple(header.get_shape()))
                if found != ("F32", tuple(shape)):
                    raise ValueError(f"holds {found[0]} {found[1]}, expected F32 {tuple(shape)}")
                x0 = f.get_tensor("x0")
            if meta.get("index") != str(index) or meta.get("sha256") != _sha256(x0):
                raise ValueError("checksum or index mismatch")
        except Exception as exc:  # noqa: BLE001 - any damage means: compute this batch again
            log.warning("--resume: %s is damaged (%s); batch %d is computed again", path.name, exc, index + 1)
            return None
        return x0

    def save(self, index: int, x0: torch.Tensor, frames: tuple[int, int]) -> None:
        """Store batch `index`'s x0 atomically (temporary file in the folder, then rename)."""
        from safetensors.torch import save

        self._check_bound()
        x0 = x0.detach().to("cpu", torch.float32).contiguous()
        meta = {"index": str(index), "frames": f"{frames[0]}-{frames[1]}", "sha256": _sha256(x0)}
        self._write_bytes(self.batch_path(index), save({"x0": x0}, metadata=meta))

    def stored(self, count: int) -> list[int]:
        """Indices < count with a file present (not checked; `load` checks)."""
        return [i for i in range(count) if os.path.lexists(self.batch_path(i))]

    def _check_bound(self) -> None:
        if not self.bound:
            raise RuntimeError("ResumeStore used before bind(): the run's key is incomplete (pipeline bug)")

    def _write_bytes(self, target: Path, data: bytes, replace: bool = True) -> bool:
        """Write `target` whole or not at all (a temporary file in the folder, then a rename).
        `replace=False`: never replace an existing target (a hard link, atomic); returns False
        (nothing written) when the target exists. Any failure, Ctrl-C included, removes the
        temporary file."""
        fd, temp = tempfile.mkstemp(dir=self.path, prefix=PARTIAL_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(temp, target)  # replaces a link itself, never what it points to
                return True
            return move_no_overwrite(temp, target)  # False: left for the `finally` to remove
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        finally:
            if not replace and os.path.lexists(temp):
                try:
                    os.unlink(temp)
                except OSError:
                    pass


def _is_partial(name: str) -> bool:
    return name.startswith(PARTIAL_PREFIX) and name.endswith(".tmp")


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _flat(key: Mapping, prefix: str = "") -> dict:
    """{"settings": {"seed": 1}} -> {"settings.seed": 1}: a mismatch names the very field."""
    out = {}
    for k, v in key.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value) -> str:
    """JSON text, cut to 80 characters: names and values from the folder reach the terminal
    escaped (no control characters)."""
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["FORMAT", "ResumeError", "ResumeStore", "content_identity", "file_identity"]
