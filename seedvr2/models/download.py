"""Finding model files in a models folder, and downloading the known ones that are missing.

Rules:
* Nothing is downloaded at import or while listing; only `ensure_model_file(..., download=True)`
  downloads, and only a name from the registry.
* A file already in the models folder is used as it is and never overwritten or deleted (a size
  different from the registry's is logged, and a broken file fails later with the loader's
  message naming it).
* Downloads go through `huggingface_hub.hf_hub_download` into `<models>/.downloads/`, where
  huggingface_hub keeps the partial file between attempts (an interrupted download resumes).
  The finished file is verified (its SHA-256; every registry entry has one, while an exact size is
  optional and never decides) and only then moved to
  `<models>/<name>` with a no-overwrite link. A file that fails verification is removed from
  the staging folder (it is ours, not the user's) and the error says what was expected.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..files import move_no_overwrite
from .registry import Kind, ModelFile, known_file, known_files

log = logging.getLogger(__name__)

MODEL_EXTENSIONS = (".safetensors", ".sft", ".pth", ".gguf")
STAGING_DIR = ".downloads"
_HASH_CHUNK = 16 * 1024 * 1024
NETWORK_TIMEOUT = 3.0  # seconds for the reachability check before a download (lookup + connect)


class ModelFileError(FileNotFoundError):
    """A model file is missing or could not be downloaded; the message says what to do."""


def guess_kind(name: str) -> Kind:
    """Which loader a file name belongs to, for listing only (loading checks the keys)."""
    lower = Path(name).name.lower()
    if lower.endswith(".pt") or lower.startswith(("pos_emb", "neg_emb", "text_emb")):
        return "text"
    return "vae" if "vae" in lower else "dit"


def local_model_files(models_dirs: Iterable[str | os.PathLike]) -> list[str]:
    """Model files under the folders (recursively), as paths relative to their folder, sorted."""
    found: set[str] = set()
    for folder in map(Path, models_dirs):
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS and not rel.parts[0].startswith("."):
                found.add(rel.as_posix())
    return sorted(found)


def list_models(models_dirs: Iterable[str | os.PathLike], kind: Kind) -> list[str]:
    """Choices for a loader: local files of `kind` first, then known downloadable names not present.

    Reads directory entries only: no file is opened and nothing is downloaded.
    """
    local = [f for f in local_model_files(models_dirs) if guess_kind(f) == kind]
    present = {Path(f).name for f in local}
    missing = [m.name for m in known_files(kind) if m.name not in present]
    return local + missing


def find_model_file(name: str, models_dirs: Iterable[str | os.PathLike]) -> Path | None:
    """An existing file: `name` as a path, or relative to one of the folders."""
    direct = Path(name).expanduser()
    if direct.is_absolute() and direct.is_file():
        return direct
    for folder in map(Path, models_dirs):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    if direct.is_file():
        return direct
    return None


def ensure_model_file(name: str, models_dir: str | os.PathLike, *, download: bool = True,
                      extra_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The path of model `name`, downloading it into `models_dir` if it is a known, missing file.

    `extra_dirs` are searched too (ComfyUI's extra_model_paths) but never written to.
    Raises ModelFileError when the file is missing and cannot (or may not) be downloaded.
    """
    models_dir = Path(models_dir)
    found = find_model_file(name, [models_dir, *extra_dirs])
    entry = known_file(Path(name).name)
    if found is not None:
        if entry is not None and entry.size is not None and found.stat().st_size != entry.size:
            log.warning("SeedVR2: %s is %d bytes, but the published %s is %d bytes; using it as it is (it was "
                        "not modified). If loading fails, move it away and let it download again.",
                        found, found.stat().st_size, entry.name, entry.size)
        return found
    if entry is None:
        raise ModelFileError(
            f"model file {name!r} not found in {models_dir}" + "".join(f" or {d}" for d in extra_dirs) +
            ". Put the file there, or choose one of the known models, which download automatically: "
            f"{', '.join(m.name for m in known_files(guess_kind(name)))}")
    if not download:
        raise ModelFileError(
            f"model file {entry.name!r} not found in {models_dir} and downloads are off. Download it yourself, or "
            f"enable downloads:\n{manual_download_text([entry], models_dir)}")
    return download_model_file(entry, models_dir)


def download_model_file(entry: ModelFile, models_dir: str | os.PathLike) -> Path:
    """Download `entry` into `models_dir`/`entry.name` (resumable, verified, never overwriting).

    Fails fast, before anything is written, when the folder cannot take the file or the hub
    cannot be reached (`check_network`, a few seconds at most instead of the hub client's half
    minute of retries). Whatever happens, the staging folder keeps at most the partial file the
    next attempt resumes; no lock or cache metadata is left behind.
    """
    try:
        import huggingface_hub
    except ImportError:
        raise ModelFileError(
            f"{entry.name} is missing and huggingface_hub is not installed to download it. Run "
            f"`pip install huggingface_hub`, or download it yourself:\n{manual_download_text([entry], models_dir)}"
        ) from None
    models_dir = Path(models_dir)
    target = models_dir / entry.name
    staging = models_dir / STAGING_DIR
    check_models_dir(models_dir, [entry])
    check_network(hub_endpoint(), [entry], models_dir)
    _make_staging(staging, entry, models_dir)
    log.info("SeedVR2: downloading %s (%s) from %s into %s", entry.name, entry.size_text, entry.repo, models_dir)
    try:
        with _one_copy_of_hub_logs():
            staged = Path(huggingface_hub.hf_hub_download(**_download_kwargs(huggingface_hub, entry, staging)))
    except Exception as exc:  # noqa: BLE001 - network/auth/disk errors all end the same way for the user
        partial = _clean_staging(staging, entry)
        of = f" of {entry.size:,}" if entry.size is not None else ""
        kept = (f" The partial file is kept ({partial.stat().st_size:,}{of} bytes, at {partial}) and "
                "the next attempt resumes it." if partial is not None else "")
        raise ModelFileError(
            f"downloading {entry.name} failed ({type(exc).__name__}: {_first_line(exc)}).{kept} Or download it "
            f"yourself:\n{manual_download_text([entry], models_dir)}") from exc
    try:
        verify_file(staged, entry)
    except ModelFileError:
        staged.unlink(missing_ok=True)
        _clean_staging(staging, entry)
        raise
    _move_no_overwrite(staged, target)
    _clean_staging(staging, entry)
    log.info("SeedVR2: %s verified and saved to %s", entry.name, target)
    return target


def manual_download_text(entries: Iterable[ModelFile], folder: str | os.PathLike) -> str:
    """One line per file: name, size, URL, SHA-256 when the size is not exact, and the folder to put
    it in (for a manual download)."""
    folder = os.path.abspath(folder)
    return "\n".join(f"  {m.name} ({m.size_text}{'' if m.size is not None else f', SHA-256 {m.sha256}'}) "
                     f"from {m.url} into {folder}" for m in entries)


def check_models_dir(models_dir: str | os.PathLike, entries: Iterable[ModelFile]) -> None:
    """Say why `models_dir` cannot receive downloads (a file in its path, not writable), creating
    nothing: the folder is made only when a download actually starts."""
    models_dir = Path(models_dir)
    manual = manual_download_text(entries, models_dir)
    existing = models_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ModelFileError(
            f"models folder {models_dir} cannot be created: part of that path ({existing}) is a file, not a folder. "
            f"Choose another models folder (--models-dir), or download the files yourself:\n{manual}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ModelFileError(
            f"models folder {models_dir} is not writable ({existing} is read-only for this user), so missing files "
            f"cannot be downloaded into it. Choose a writable models folder (--models-dir), or download the files "
            f"yourself:\n{manual}")


def _make_staging(staging: Path, entry: ModelFile, models_dir: Path) -> None:
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(f"models folder {models_dir} cannot be used ({exc.strerror or exc}). Download the file "
                             f"yourself:\n{manual_download_text([entry], models_dir)}") from None


class NoNetworkError(ModelFileError):
    """The download host cannot be reached at all (no network, DNS failure, refused connection)."""


def hub_endpoint() -> str:
    """The Hugging Face endpoint downloads use (HF_ENDPOINT, as huggingface_hub read it at import)."""
    try:
        from huggingface_hub import constants

        endpoint = getattr(constants, "ENDPOINT", None)
    except ImportError:
        endpoint = None
    return endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def check_network(endpoint: str, entries: Iterable[ModelFile], folder: str | os.PathLike,
                  timeout: float = NETWORK_TIMEOUT) -> None:
    """Raise NoNetworkError within `timeout` seconds when `endpoint` cannot be connected to.

    One name lookup and one TCP connect, each bounded (the lookup runs in a daemon thread,
    since `getaddrinfo` has no timeout of its own). A reachable host says nothing about the
    download itself; the hub client's own retries handle flaky connections after this.
    """
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or ""
    port = url.port or (80 if url.scheme == "http" else 443)
    deadline = time.monotonic() + timeout
    reason, addresses = None, []
    answer: list = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            answer.append(exc)

    worker = threading.Thread(target=lookup, name="seedvr2-network-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if not answer:
        reason = f"looking up {host} took over {timeout:.0f} s"
    elif isinstance(answer[0], OSError):
        reason = f"cannot resolve {host}: {answer[0].strerror or answer[0]}"
    else:
        addresses = answer[0]
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(address)
            return
        except OSError as exc:
            reason = f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    entries = list(entries)
    raise NoNetworkError(
        f"no network: {reason or f'no address for {host}'}.\nDownload " +
        ("this file" if len(entries) == 1 else "these files") +
        f" yourself (or retry when online):\n{manual_download_text(entries, folder)}")


@contextlib.contextmanager
def _one_copy_of_hub_logs() -> Iterator[None]:
    """huggingface_hub prints its warnings (retries) through a handler of its own *and* passes them
    on to the root logger; when the root logger has handlers (the CLI, ComfyUI), drop the hub's own
    for the download so each line is printed once, in the application's format."""
    hub_logger = logging.getLogger("huggingface_hub")
    removed = []
    if logging.getLogger().handlers and hub_logger.propagate:
        removed = [h for h in hub_logger.handlers if isinstance(h, logging.StreamHandler)]
        for handler in removed:
            hub_logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in removed:
            hub_logger.addHandler(handler)


def _clean_staging(staging: Path, entry: ModelFile) -> Path | None:
    """Remove the hub client's lock and metadata files (and empty folders) from the staging folder;
    return the partial download of `entry` if one with data is left (kept: the next attempt resumes)."""
    partial = None
    if staging.is_dir():
        for path in sorted(staging.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # only when empty
                elif path.name.endswith(".incomplete") and path.stat().st_size > 0:
                    partial = path if Path(entry.path_in_repo).name in path.name or partial is None else partial
                elif path.suffix in (".lock", ".metadata", ".incomplete") or path.name in ("CACHEDIR.TAG",
                                                                                            ".gitignore"):
                    path.unlink()
            except OSError:
                pass  # not empty, or not ours to remove
        with contextlib.suppress(OSError):
            staging.rmdir()
    return partial


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _download_kwargs(hub, entry: ModelFile, staging: Path) -> dict:
    kwargs = dict(repo_id=entry.repo, filename=entry.path_in_repo, revision=entry.revision, local_dir=str(staging))
    # huggingface_hub < 0.23 symlinks into its cache by default; we want real bytes in the folder.
    if "local_dir_use_symlinks" in inspect.signature(hub.hf_hub_download).parameters and \
            _version_tuple(getattr(hub, "__version__", "0")) < (0, 23):
        kwargs["local_dir_use_symlinks"] = False
    return kwargs


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, entry: ModelFile) -> None:
    """Raise ModelFileError unless `path` has the entry's SHA-256.

    The hash decides: a few registry sizes are computed rather than observed, so a size mismatch
    with the right hash is only logged; an entry without an exact size (None) is checked by its
    hash alone.
    """
    size = path.stat().st_size
    digest = sha256_of(path)
    if digest == entry.sha256:
        if entry.size is not None and size != entry.size:
            log.warning("SeedVR2: %s has the published SHA-256 but %d bytes, not the %d in the registry",
                        entry.name, size, entry.size)
        return
    raise ModelFileError(
        f"downloaded {entry.name} does not match the published file: SHA-256 {digest} ({size:,} bytes), expected "
        f"{entry.sha256} ({entry.size_text}) from {entry.url}. The download was incomplete or the file "
        "changed upstream; it was discarded, try again.")


def _move_no_overwrite(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, failing instead of replacing a file that appeared at `dst` meanwhile."""
    if not move_no_overwrite(src, dst):
        raise ModelFileError(f"{dst} appeared while {src.name} was downloading; the existing file was kept and the "
                             f"download left at {src}")
