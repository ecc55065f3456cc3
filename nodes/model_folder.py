"""The `models/SEEDVR2` folder (key `seedvr2`, the folder numz's users already have), registered
defensively: a user's extra_model_paths.yaml may have created the key already, with no extension
filter. Listing reads ComfyUI's cached file list only; nothing is opened or downloaded."""
from __future__ import annotations

import os

import folder_paths

from ..seedvr2.models import MODEL_EXTENSIONS, known_files
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
    local = [f for f in folder_paths.get_filename_list(FOLDER_KEY) if guess_kind(f) == kind]
    present = {os.path.basename(f) for f in local}
    return local + [m.name for m in known_files(kind) if m.name not in present]
