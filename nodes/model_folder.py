"""The `models/SEEDVR2` folder (key `seedvr2`, the folder numz's users already have), registered
defensively: a user's extra_model_paths.yaml may have created the key already, with no extension
filter. Listing reads ComfyUI's cached file list only; nothing is opened or downloaded.

`confined_model` is the only way a loader turns the `model` value of a prompt into a file: a
file inside a registered folder, or a known downloadable name (see `seedvr2.models.confine`)."""
from __future__ import annotations

import os

import folder_paths

from ..seedvr2.models import MODEL_EXTENSIONS, confined_model_path, downloadable_name, known_files, refusal
from ..seedvr2.models.confine import staged_name
from ..seedvr2.models.download import guess_kind

FOLDER_KEY = "seedvr2"
DEFAULT_DIR = os.path.join(folder_paths.models_dir, "SEEDVR2")


def register() -> None:
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER_KEY, ([], set()))
    if DEFAULT_DIR not in paths:
        paths.append(DEFAULT_DIR)
    folder_paths.folder_names_and_paths[FOLDER_KEY] = (paths, set(MODEL_EXTENSIONS) | {".pt"})


def model_dirs() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER_KEY))


def download_dir() -> str:
    """Where missing known models are downloaded: the first configured folder."""
    dirs = model_dirs()
    return dirs[0] if dirs else DEFAULT_DIR


def choices(kind: str) -> list[str]:
    """Local files of `kind` (by name), then the known downloadable ones not present yet."""
    local = [f for f in folder_paths.get_filename_list(FOLDER_KEY) if guess_kind(f) == kind and not staged_name(f)]
    present = {os.path.basename(f) for f in local}
    return local + [m.name for m in known_files(kind) if m.name not in present]


def confined_model(name: object, kind: str, input_name: str = "model") -> str:
    """What a loader may load for the prompt value `name`: the real path of a file inside one of
    the registered folders, an entry of ComfyUI's own listing of them (links the server's owner
    placed there), or a known downloadable name of `kind`. Anything else raises ModelFileError
    with one message that names the input and reveals nothing about the file system."""
    found = confined_model_path(name, model_dirs())
    if found is not None:
        return str(found)
    if isinstance(name, str) and not staged_name(name) and name in folder_paths.get_filename_list(FOLDER_KEY):
        listed = folder_paths.get_full_path(FOLDER_KEY, name)
        if listed and os.path.isfile(listed):
            return listed
    if downloadable_name(name, kind):
        return name
    raise refusal(input_name, name)
