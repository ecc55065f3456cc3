"""From the names a user picks to checked files: DiT, VAE and the text embedding.

`resolve_models` is what the CLI and the loader nodes call: it finds (or downloads) the files,
recognises their layouts, refuses a VAE chosen as the DiT and the reverse, and finds the
positive text embedding (inside a Comfy-Org DiT file, else `pos_emb.pt` beside the DiT or in the
models folder, else downloaded from ByteDance-Seed/SeedVR2-3B).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..text_embeds import load_pos_emb
from .download import (ModelFileError, NoNetworkError, check_models_dir, download_model_file, ensure_model_file, find_model_file,
                       guess_kind, manual_download_text)
from .layout import CheckpointLayout, expect_kind, inspect_checkpoint
from .registry import COMFY_ORG, POS_EMB_FILE, ModelFile, known_file, known_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPaths:
    """Checked files for one run: the DiT, the VAE (possibly the DiT file itself), the embedding."""

    dit: CheckpointLayout
    vae: CheckpointLayout
    pos_emb: Path


def checked_layout(path: str | os.PathLike, kind: str) -> CheckpointLayout:
    """Recognise `path` and check it holds a model of `kind` ("dit" or "vae"); a ComfyUI
    all-in-one DiT file serves as a VAE through its embedded `vae.` weights."""
    layout = inspect_checkpoint(path)
    if kind == "vae" and layout.kind == "dit" and layout.has_vae:
        return layout.embedded_vae()
    expect_kind(layout, kind)
    return layout


def resolve_model(name: str, kind: str, models_dir: str | os.PathLike, *, download: bool = True,
                  extra_dirs: Iterable[str | os.PathLike] = ()) -> CheckpointLayout:
    """Find (or download, for a missing registry name when `download`) and check model `name`."""
    return checked_layout(ensure_model_file(name, models_dir, download=download, extra_dirs=list(extra_dirs)), kind)


def resolve_models(dit: str, vae: str | None, models_dir: str | os.PathLike, *, download: bool = True,
                   extra_dirs: Iterable[str | os.PathLike] = ()) -> ModelPaths:
    """Find/download and recognise the DiT and VAE files named `dit` and `vae`.

    `vae=None` takes the VAE embedded in an all-in-one DiT file. Downloads happen only for
    registry names that are missing and only when `download` is True.
    """
    extra_dirs = list(extra_dirs)
    dit_layout = resolve_model(dit, "dit", models_dir, download=download, extra_dirs=extra_dirs)
    if vae is None:
        vae_layout = dit_layout.embedded_vae()
    else:
        vae_layout = resolve_model(vae, "vae", models_dir, download=download, extra_dirs=extra_dirs)
    pos_emb = resolve_pos_emb(dit_layout, models_dir, download=download, extra_dirs=extra_dirs)
    log.info("SeedVR2: DiT %s (%s, %s), VAE %s, text embedding %s", dit_layout.path.name, dit_layout.variant,
             dit_layout.layout, vae_layout.path.name, pos_emb.name)
    return ModelPaths(dit_layout, vae_layout, pos_emb)


def resolve_pos_emb(dit: CheckpointLayout, models_dir: str | os.PathLike, *, download: bool = True,
                    extra_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The file holding the positive text embedding for this DiT."""
    if dit.pos_emb_key is not None:
        return dit.path
    local = find_model_file(POS_EMB_FILE, [dit.path.parent, models_dir, *extra_dirs])
    if local is not None:
        return local
    return ensure_model_file(POS_EMB_FILE, models_dir, download=download, extra_dirs=extra_dirs)


def preflight(dit: str | None, vae: str | None, models_dir: str | os.PathLike, *, download: bool = True,
              extra_dirs: Iterable[str | os.PathLike] = ()) -> None:
    """Make sure every file a run needs is there before anything large is loaded.

    Needed: the DiT `dit`, the VAE `vae` (None: not needed by this caller) and, unless the DiT
    embeds it, the text embedding `pos_emb.pt`. Reads nothing but directory entries and, for a
    local DiT, its safetensors header (whether it embeds the embedding). Missing registry files
    are downloaded (when `download`); whatever is still missing after that is reported in ONE
    ModelFileError listing each file's name, size, URL and target folder. A missing name that
    is not in the registry is reported with the known choices.
    """
    extra_dirs = list(extra_dirs)
    folders = [Path(models_dir), *map(Path, extra_dirs)]
    missing: list[ModelFile] = []
    unknown: list[str] = []

    def need(name: str, near: list[Path]) -> Path | None:
        found = find_model_file(name, near)
        if found is None:
            entry = known_file(Path(name).name)
            if entry is None:
                unknown.append(name)
            elif entry not in missing:
                missing.append(entry)
        return found

    dit_path = need(dit, folders) if dit is not None else None
    if dit is not None and _needs_pos_emb(dit, dit_path):
        need(POS_EMB_FILE, ([dit_path.parent] if dit_path is not None else []) + folders)
    if vae is not None:
        need(vae, folders)
    if unknown:
        where = " or ".join(str(f) for f in folders)
        also = f" Also missing:\n{manual_download_text(missing, models_dir)}" if missing else ""
        raise ModelFileError(
            f"model file(s) {', '.join(repr(u) for u in unknown)} not found in {where}. Put the file there, or choose "
            f"one of the known models, which download automatically: "
            f"{', '.join(m.name for m in known_files(guess_kind(unknown[0])))}.{also}")
    if not missing:
        return
    if not download:
        raise ModelFileError(
            f"{len(missing)} model file(s) not found in {models_dir} and downloads are off. Download them yourself "
            f"(or enable downloads):\n{manual_download_text(missing, models_dir)}")
    check_models_dir(models_dir, missing)  # before any download: one message naming all files
    failed: list[ModelFile] = []
    reasons: list[str] = []
    last_error: ModelFileError | None = None
    for entry in missing:
        if failed and isinstance(last_error, NoNetworkError):
            failed.append(entry)  # offline: the others fail the same way, do not wait for each
            continue
        try:
            download_model_file(entry, models_dir)
        except ModelFileError as exc:
            last_error = exc
            failed.append(entry)
            reasons.append(str(exc).split("\n")[0])
    if failed:
        raise ModelFileError(
            f"{len(failed)} model file(s) could not be downloaded: {' / '.join(dict.fromkeys(reasons))}\n"
            f"Download {'it' if len(failed) == 1 else 'them'} yourself into the models folder:\n"
            f"{manual_download_text(failed, models_dir)}")


def _needs_pos_emb(dit: str, dit_path: Path | None) -> bool:
    """Whether the DiT needs pos_emb.pt beside it (Comfy-Org single files embed the embedding)."""
    if dit_path is not None:
        return inspect_checkpoint(dit_path).pos_emb_key is None
    entry = known_file(Path(dit).name)
    return entry is None or entry.repo != COMFY_ORG


__all__ = ["ModelPaths", "checked_layout", "preflight", "resolve_model", "resolve_models", "resolve_pos_emb",
           "load_pos_emb"]
