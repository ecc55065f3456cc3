"""Model files: the registry of known downloads, finding/downloading them, recognising layouts."""
from .download import (MODEL_EXTENSIONS, ModelFileError, NoNetworkError, download_model_file, ensure_model_file, find_model_file,
                       list_models, local_model_files, verify_file)
from .confine import confined_model_path, downloadable_name, refusal
from .layout import CheckpointLayout, expect_kind, inspect_checkpoint
from .registry import DEFAULT_DIT, DEFAULT_VAE, MODEL_FILES, POS_EMB_FILE, ModelFile, known_file, known_files
from .resolve import ModelPaths, checked_layout, preflight, resolve_model, resolve_models, resolve_pos_emb

__all__ = [
    "MODEL_EXTENSIONS", "ModelFileError", "NoNetworkError", "download_model_file", "ensure_model_file", "find_model_file",
    "list_models", "local_model_files", "verify_file", "CheckpointLayout", "expect_kind", "inspect_checkpoint",
    "DEFAULT_DIT", "DEFAULT_VAE", "MODEL_FILES", "POS_EMB_FILE", "ModelFile", "known_file", "known_files",
    "ModelPaths", "checked_layout", "confined_model_path", "downloadable_name", "refusal", "preflight", "resolve_model", "resolve_models", "resolve_pos_emb",
]
