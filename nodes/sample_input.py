"""The sample clip that the video example workflow opens with, placed in ComfyUI's input folder.

ComfyUI ships no video in `input/`, so the example's Load Video node would open red, with a
"missing media" warning. At import the pack copies its small clip (`assets/`, 320x240, 17 frames)
into the input folder under a name of its own, and never replaces anything: when that name exists
(the user's file, or ours from an earlier start) nothing is written. The copy goes to a temporary
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

SAMPLE_NAME = "seedvr2_blockswap_sample.mp4"
SAMPLE_SOURCE = Path(__file__).resolve().parents[1] / "assets" / SAMPLE_NAME

log = logging.getLogger(__name__)


def provide(input_dir: str | None = None) -> Path | None:
    """Place the sample clip in `input_dir` (ComfyUI's input folder) unless the name is taken.
    Returns the path written, or None when nothing was written."""
    folder = Path(input_dir or folder_paths.get_input_directory())
    target = folder / SAMPLE_NAME
    if os.path.lexists(target):
        return None
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(SAMPLE_SOURCE, "rb") as src, \
                tempfile.NamedTemporaryFile(dir=folder, prefix=".seedvr2_sample_", delete=False) as out:
            tmp = out.name
            shutil.copyfileobj(src, out)
        os.link(tmp, target)  # publishes the whole file at once; fails if the name was taken meanwhile
        return target
    except FileExistsError:
        return None
    except OSError as exc:
        log.warning("SeedVR2 BlockSwap: could not place the sample clip %s in %s (%s); the video example "
                    "workflow will ask for a video", SAMPLE_NAME, folder, exc)
        return None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

