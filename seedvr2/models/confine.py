"""Confining model names that arrive from outside (a ComfyUI prompt) to the model folders.

A name a client sends is untrusted: `confined_model_path` accepts it only when it is a relative
path without `..` whose real path (all links followed) is a file inside the real path of one of
the given folders, with a model file extension. Links that the server's owner placed inside a
folder and that point elsewhere are honoured only through the host's own listing of the folder
(the caller passes it as `listed`); a name is never followed out of a folder by itself.

Nothing under the download staging folder (`.downloads`) is a model: a file there is a download
not yet verified (or left by a process killed while hashing it), and ComfyUI's own listing, which
skips only `.git`, would otherwise offer it in the dropdown (`staged_name`).

`refusal` is the one message for every refused name: it names the input and the value and says
nothing about the file system (not whether a file exists, not what it holds).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from .download import MODEL_EXTENSIONS, STAGING_DIR, ModelFileError
from .registry import Kind, known_file

_SHOWN_CHARS = 120  # of a refused name, in the message


def confined_model_path(name: object, folders: Iterable[str | os.PathLike]) -> Path | None:
    """The real path of model file `name` inside one of `folders`, or None (also for any bad name)."""
    if not _plain_relative(name):
        return None
    for folder in folders:
        root = Path(os.path.realpath(folder))
        candidate = Path(os.path.realpath(root / name))
        if candidate.is_relative_to(root) and candidate.is_file():
            return candidate
    return None


def downloadable_name(name: object, kind: Kind) -> bool:
    """Whether `name` is exactly a registry file name of `kind` (bare, no folder part)."""
    return isinstance(name, str) and "/" not in name and "\\" not in name and \
        (entry := known_file(name)) is not None and entry.kind == kind


def staged_name(name: object) -> bool:
    """Whether `name` (relative to a model folder) lies in the download staging folder."""
    if not isinstance(name, str):
        return False
    return any(flavour.parts[:1] == (STAGING_DIR,) for flavour in (PurePosixPath(name), PureWindowsPath(name)))


def refusal(input_name: str, name: object) -> ModelFileError:
    shown = repr(name)
    if len(shown) > _SHOWN_CHARS:
        shown = shown[:_SHOWN_CHARS] + "..."
    return ModelFileError(
        f"{input_name}: {shown} is not a model file in the SeedVR2 model folders (ComfyUI/models/SEEDVR2 or a "
        "'seedvr2:' folder of extra_model_paths.yaml) nor a known downloadable model; choose one from the list")


def _plain_relative(name: object) -> bool:
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 4096:
        return False
    if os.path.splitext(name)[1].lower() not in MODEL_EXTENSIONS:
        return False
    for flavour in (PurePosixPath(name), PureWindowsPath(name)):
        if flavour.is_absolute() or flavour.drive or flavour.root or ".." in flavour.parts:
            return False
    return not staged_name(name)


__all__ = ["confined_model_path", "downloadable_name", "refusal", "staged_name"]
