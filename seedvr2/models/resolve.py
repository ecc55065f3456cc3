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
from .download import ensure_model_file, find_model_file
from .layout import CheckpointLayout, expect_kind, inspect_checkpoint
from .registry import POS_EMB_FILE

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


__all__ = ["ModelPaths", "checked_layout", "resolve_model", "resolve_models", "resolve_pos_emb", "load_pos_emb"]
