"""Prove the runtime requirements complete: the installed command line upscales an image and a video.

    <venv>/bin/python .ci/runtime_smoke.py WORK_DIR [--installed]

`.ci/run` calls this with a venv that holds only torch and this project installed with its `cli`
extra (the README's set-up), never the test requirements: a module the command line imports but
the extra does not declare fails here (as `numpy` once did). Everything runs with WORK_DIR as the
working directory, outside the checkout, so `seedvr2` can only come from the installed package;
`--installed` also checks that it is not the checkout's copy (a non-editable `pip install .`).

Steps: write the tiny random-weight models of `tests/tiny_models.py` into WORK_DIR/models; run
`seedvr2 --help` and `python -m seedvr2 --help`; upscale a 7-frame 16x12 H.264 clip to 32x24 and a
11x9 RGBA PNG to 22x18 with `--no-download --models-dir`; check frame count, frame rate, sizes
and alpha. Uses only what the runtime venv has (torch, numpy, av, Pillow, the package).
Exit status 0 on success; otherwise 1 with the failing step's output.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class SmokeFailure(Exception):
    pass


def run(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SmokeFailure(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout


def load_tiny_models():
    spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_clip(path: Path, frames: int, height: int, width: int, fps: int) -> None:
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[0:height, 0:width]
        for t in range(frames):
            rgb = np.stack([(x * 16 + t * 20) % 256, (y * 20) % 256, np.full_like(x, 128)], axis=-1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def read_clip(path: Path) -> tuple[int, int, int, Fraction]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return len(frames), frames[0].shape[0], frames[0].shape[1], Fraction(stream.average_rate)


def smoke(work: Path, installed: bool) -> None:
    cli = Path(sys.executable).with_name("seedvr2")
    # First the command line alone, before this script imports anything that could hide a missing package.
    for cmd in ([cli, "--help"], [sys.executable, "-m", "seedvr2", "--help"]):
        if "--resolution" not in run(cmd, work):
            raise SmokeFailure(f"{cmd}: --help does not list the options")

    import numpy as np
    import seedvr2
    from PIL import Image

    origin = Path(seedvr2.__file__).resolve()
    if installed and REPO in origin.parents:
        raise SmokeFailure(f"seedvr2 was imported from the checkout ({origin}), not from the installed package")
    models = load_tiny_models().write_tiny_models(work / "models")
    common = ["--models-dir", models.models_dir, "--dit", models.dit.name, "--vae", models.vae.name,
              "--no-download", "--device", "cpu", "-q"]

    write_clip(work / "clip.mp4", frames=7, height=12, width=16, fps=12)
    run([cli, "clip.mp4", "-o", "clip_up.mp4", "--resolution", "24", "--batch-size", "5", *common], work)
    got = read_clip(work / "clip_up.mp4")
    if got != (7, 24, 32, Fraction(12)):
        raise SmokeFailure(f"video: expected 7 frames of 32x24 at 12 fps, got {got[0]} of {got[2]}x{got[1]} at {got[3]}")

    rgba = np.zeros((9, 11, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.linspace(0, 255, 11, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(work / "logo.png")
    run([cli, "logo.png", "-o", "logo_up.png", "--resolution", "18", *common], work)
    with Image.open(work / "logo_up.png") as img:
        alpha = np.asarray(img)[..., 3] if img.mode == "RGBA" else None
        if img.size != (22, 18) or alpha is None or not (alpha[:, 0].max() < 64 and alpha[:, -1].min() > 192):
            raise SmokeFailure(f"image: expected a 22x18 RGBA PNG with its alpha ramp, got {img.size} {img.mode}")
    print(f"runtime smoke: ok (seedvr2 from {origin.parent}; video 16x12 -> 32x24, 7 frames; PNG 11x9 -> 22x18 RGBA)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", type=Path, help="scratch folder (emptied first), outside the checkout")
    parser.add_argument("--installed", action="store_true", help="fail unless seedvr2 is the installed copy")
    args = parser.parse_args()
    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        smoke(work, args.installed)
    except SmokeFailure as exc:
        print(f"runtime smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
