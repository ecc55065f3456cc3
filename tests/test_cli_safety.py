"""The command line never loses a user's file and never ends in a traceback.

Classes of problem (issue 10), one test each:
* an interrupted run (Ctrl-C, SIGKILL) of the real CLI in a subprocess leaves the previous output
  intact and no debris (SIGKILL: at most a clearly named temporary file, never at the target);
* outputs that would destroy the input (the same file under any spelling or link) are refused;
* every output problem (folder, format, existing numbered frames) is reported before any work:
  the models folder of these runs is empty, so a check that came after model loading would
  report the missing models instead;
* bad devices, folders, dtypes, frames and sinks end in one line naming the input;
* progress bars and log lines never share a line of the terminal.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seedvr2.cli import ProgressBar, main, resolve_device
from seedvr2.outputs import PARTIAL_MARK
from seedvr2.pipeline import TensorSink, UpscaleInputError, UpscaleModels, UpscaleSettings, upscale
from tiny_models import write_tiny_models

REPO = Path(__file__).resolve().parents[1]
av = pytest.importorskip("av", reason="PyAV (`pip install av`) is needed to write test videos")
Image = pytest.importorskip("PIL.Image", reason="Pillow is needed for image output")


def write_video(path: Path, frames: int, height: int = 16, width: int = 16, fps: int = 12) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_safety") / "models"
    write_tiny_models(folder)
    return folder


def cli_args(models_dir, *args):
    return [*map(str, args), "--models-dir", str(models_dir), "--dit", "tiny_dit_3b.safetensors",
            "--vae", "tiny_vae.safetensors", "--no-download", "--device", "cpu"]


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if PARTIAL_MARK in p.name)


# ------------------------------------------------------------------------------------------
# Interrupted runs (real CLI, real signals)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_run_keeps_the_previous_output_and_leaves_no_debris(models_dir, tmp_path, sig):
    """Subprocess of `python -m seedvr2 ... -y` over an existing output, signalled while it decodes
    and writes frames (seen on its progress bar). Slow (~5-15 s each): a fresh Python imports torch."""
    src = write_video(tmp_path / "clip.mp4", frames=21)
    out = tmp_path / "clip_up.mp4"
    out.write_bytes(b"the previous good output")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "seedvr2", *cli_args(models_dir, src, "-o", out, "-y",
                                                                        "--resolution", "48", "--vae-tile-size", "0")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = _StderrWatcher(proc)
    assert err.wait_for(r"VAE decode.*\b[1-9]\d*/5\b", timeout=120), f"never reached the decode: {err.text}"
    assert proc.poll() is None, f"the run ended before it could be interrupted: {err.text}"
    assert partials(tmp_path), "no temporary output beside the target while the run writes"
    assert out.read_bytes() == b"the previous good output", "the target was touched before the run finished"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    err.join()

    assert out.read_bytes() == b"the previous good output"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err.text and "Traceback" not in err.text, err.text
        assert partials(tmp_path) == [], "Ctrl-C left a temporary file behind"
    else:
        assert proc.returncode == -signal.SIGKILL
        left = partials(tmp_path)
        assert all(p.name.startswith(".clip_up" + PARTIAL_MARK) and p != out for p in left), left
    assert sorted(p.name for p in tmp_path.iterdir() if PARTIAL_MARK not in p.name) == ["clip.mp4", "clip_up.mp4"]


class _StderrWatcher:
    """Collects a subprocess's stderr on a thread, so the test can wait for a pattern in it."""

    def __init__(self, proc: subprocess.Popen):
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text):
                return True
            if not self._thread.is_alive():
                return bool(re.search(pattern, self.text))
            time.sleep(0.005)
        return False

    def join(self) -> None:
        self._thread.join(timeout=30)


def test_a_failed_run_leaves_nothing_at_the_target(models_dir, tmp_path, capsys, monkeypatch):
    """A failure after writing started (here: the decode raises) removes the temporary output."""
    src = write_video(tmp_path / "clip.mp4", frames=9)
    out = tmp_path / "out.mp4"
    import seedvr2.pipeline.run as run_module

    real_decode = run_module._decode
    calls = []

    def failing_decode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(out))
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(run_module, "_decode", failing_decode)
    code = main(cli_args(models_dir, src, "-o", out, "-q", "--resolution", "16", "--vae-tile-size", "0"))
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err, err
    assert not out.exists() and partials(tmp_path) == []


# ------------------------------------------------------------------------------------------
# Outputs checked before any work
# ------------------------------------------------------------------------------------------

def test_the_input_is_never_an_output_under_any_name_or_link(tmp_path, capsys):
    src = write_video(tmp_path / "clip.mp4", frames=2)
    original = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.mp4")
    (tmp_path / "soft.mp4").symlink_to(src)
    spellings = [src, tmp_path / "sub" / ".." / "clip.mp4", Path(os.path.relpath(src)), tmp_path / "hard.mp4",
                 tmp_path / "soft.mp4"]
    for output in spellings:
        code = main([str(src), "-o", str(output), "-y", "--models-dir", str(tmp_path / "no_models"),
                     "--no-download", "--device", "cpu", "-q"])
        err = capsys.readouterr().err
        assert code == 2 and "is the input file" in err, (output, err)
    assert src.read_bytes() == original


@pytest.mark.parametrize("output,expected", [
    ("missing_dir/out.mp4", "the folder .*missing_dir does not exist"),
    ("a_folder", "a_folder is a folder; give a file name inside it"),
    ("out.xyz", r"unknown output format '\.xyz'"),
    ("frames.png", r"3 of the 9 numbered output files exist \(frames_00000.png, frames_00004.png, frames_00008"),
])
def test_output_problems_are_reported_before_any_work(tmp_path, capsys, output, expected):
    """Before the input is decoded (an undecodable input is reported only after the output's
    problem, except when the frame count decides the names) and before any model loads."""
    src = write_video(tmp_path / "clip.mp4", frames=9)
    if output != "frames.png":
        src.write_bytes(b"not a video, and never read")
    (tmp_path / "a_folder").mkdir()
    for i in (0, 4, 8):
        (tmp_path / f"frames_{i:05d}.png").write_bytes(b"keep")
    started = time.monotonic()
    code = main([str(src), "-o", str(tmp_path / output), "--models-dir", str(tmp_path / "no_models"),
                 "--no-download", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "model" not in err.split(":", 1)[1].split(";")[0], err
    assert re.search(expected, err), err
    assert len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < 5
    assert all((tmp_path / f"frames_{i:05d}.png").read_bytes() == b"keep" for i in (0, 4, 8))


# ------------------------------------------------------------------------------------------
# No tracebacks: one line naming the input
# ------------------------------------------------------------------------------------------

def _tiny_models_for_api(models_dir) -> UpscaleModels:
    from seedvr2.dit import load_dit
    from seedvr2.text_embeds import load_pos_emb
    from seedvr2.vae import load_vae

    return UpscaleModels(load_dit(models_dir / "tiny_dit_3b.safetensors", compute_dtype=torch.float32),
                         load_vae(models_dir / "tiny_vae.safetensors", dtype=torch.float32),
                         load_pos_emb(models_dir / "pos_emb.pt"), "cpu")


def test_bad_inputs_end_in_one_line_naming_the_input(models_dir, tmp_path, capsys, monkeypatch):
    src = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)

    def cli_error(*args) -> str:
        code = main([str(src), "-o", str(tmp_path / "o.png"), *map(str, args)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 or err.startswith("error: "), err
        return err

    assert "--device 'banana' is not a device" in cli_error("--device", "banana", "--models-dir", models_dir)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = cli_error("--device", "cpu", "--models-dir", a_file / "SEEDVR2")
    assert f"error: models folder {a_file / 'SEEDVR2'} cannot be created: part of that path ({a_file}) is a file" in err

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate the read-only folder at the OS boundary
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == read_only
                            else real_access(path, mode, **kw))
    else:
        read_only.chmod(0o555)
    err = cli_error("--device", "cpu", "--models-dir", read_only)
    monkeypatch.undo()
    assert err.startswith(f"error: models folder {read_only} is not writable")
    assert "ema_vae_fp16.safetensors (501,324,814 bytes" in err  # and says what to fetch by hand

    from seedvr2.vae import load_vae

    with pytest.raises(ValueError, match=r"^load_vae: dtype must be torch.float32.*got torch.int8$"):
        load_vae(models_dir / "tiny_vae.safetensors", dtype=torch.int8)

    models = _tiny_models_for_api(models_dir)
    settings = UpscaleSettings(resolution=16, batch_size=1)
    with pytest.raises(UpscaleInputError, match=r"^frames are on the meta device"):
        upscale(torch.empty((1, 8, 8, 3), device="meta"), models, settings)
    with pytest.raises(UpscaleInputError, match=r"^sink holds frames of shape \[1, 8, 8, 3\] but this run writes "
                                                r"1 frame\(s\) of 16x16 .*TensorSink\(1, 16, 16, 3\)"):
        upscale(torch.rand(1, 8, 8, 3), models, settings, sink=TensorSink(1, 8, 8, 3))


def test_device_messages_tell_a_cpu_build_from_a_machine_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    with pytest.raises(UpscaleInputError, match="this torch build has no CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UpscaleInputError, match="no CUDA GPU is visible on this machine .*CUDA 12.8"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UpscaleInputError, match=r"only 1 CUDA GPU\(s\) are visible"):
        resolve_device("cuda:3")
    assert resolve_device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------------------------------
# Progress bars and log lines
# ------------------------------------------------------------------------------------------

def rendered_lines(text: str) -> list[str]:
    """What a terminal shows: each line after its carriage returns overwrote it from column 0."""
    lines = []
    for raw in text.split("\n"):
        cells: list[str] = []
        col = 0
        for ch in raw:
            if ch == "\r":
                col = 0
                continue
            if col < len(cells):
                cells[col] = ch
            else:
                cells.append(ch)
            col += 1
        lines.append("".join(cells).rstrip())
    return lines


@pytest.mark.parametrize("with_tqdm", [True, False], ids=["tqdm", "plain"])
def test_log_lines_never_share_a_line_with_the_progress_bar(capsys, with_tqdm):
    if with_tqdm:
        pytest.importorskip("tqdm")
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with ProgressBar() as bar:
            if not with_tqdm:
                bar._tqdm = None
            bar.update("decode", 0, 3)
            bar.update("decode", 1, 3)
            logging.getLogger("seedvr2").info("writing out.mp4: libx264 yuv420p 170x128 at 12 fps")
            bar.update("decode", 2, 3)
            bar.update("decode", 3, 3)
        logging.getLogger("seedvr2").info("wrote out.mp4")
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
    lines = rendered_lines(capsys.readouterr().err)
    logged = [line for line in lines if "writing out.mp4" in line]
    assert logged == ["writing out.mp4: libx264 yuv420p 170x128 at 12 fps"], lines
    assert "wrote out.mp4" in lines, lines
    assert any("VAE decode" in line and "3/3" in line for line in lines), lines
