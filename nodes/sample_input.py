"""The sample clip and still that the example workflows open with, placed in ComfyUI's input folder.

ComfyUI ships no video in `input/` (and a source checkout not even `example.png`), so an example's
Load Video or Load Image node would open red, with a "missing media" warning. At import the pack
copies its small samples (`assets/`: a 320x240 clip of 17 frames and its middle frame) into the
input folder under names of its own, and never replaces anything: when a name exists (the user's
file, or ours from an earlier start) nothing is written for it. The copy goes to a temporary
file first and is published with a hard link, which fails instead of overwriting, so a
concurrent start or a user's file created meanwhile is never clobbered and no half-written clip
appears. Any failure (read-only folder, no hard links) is logged and ignored: the pack still loads.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import folder_paths

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SAMPLES = ("seedvr2_blockswap_sample.mp4", "seedvr2_blockswap_sample.png")  # the examples' Load Video / Load Image

log = logging.getLogger(__name__)


def provide(input_dir: str | None = None) -> list[Path]:
    """Place each sample in `input_dir` (default: ComfyUI's input folder) unless its name is taken.
    Returns the paths written."""
    folder = Path(input_dir or folder_paths.get_input_directory())
    return [path for path in (place(ASSETS / name, folder / name) for name in SAMPLES) if path is not None]


def place(source: Path, target: Path) -> Path | None:
    """Copy `source` to `target` unless `target` exists (even as a dangling link); None if not written."""
    folder = target.parent
    if os.path.lexists(target):
        return None
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, \
                tempfile.NamedTemporaryFile(dir=folder, prefix=".seedvr2_sample_", delete=False) as out:
            tmp = out.name
            shutil.copyfileobj(src, out)
        os.link(tmp, target)  # publishes the whole file at once; fails if the name was taken meanwhile
        return target
    except FileExistsError:
        return None
    except OSError as exc:
        log.warning("SeedVR2 BlockSwap: could not place the sample %s in %s (%s); the example workflow "
                    "using it will ask for an input file", target.name, folder, exc)
        return None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

