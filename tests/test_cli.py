"""The command line end to end on CPU with the tiny checkpoints: a generated video and an RGBA PNG."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seedvr2.cli import main
from tiny_models import write_tiny_models

Image = pytest.importorskip("PIL.Image", reason="Pillow (`pip install pillow`) is needed for image input/output")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "models" / "SEEDVR2"
    write_tiny_models(folder)
    return folder


def _cli(models_dir, *args):
    return main([*map(str, args), "--models-dir", str(models_dir), "--dit", "tiny_dit_3b.safetensors",
                 "--vae", "tiny_vae.safetensors", "--no-download", "--device", "cpu", "-q"])


def _write_video(av, path, frames: int, height: int, width: int, fps: int) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            y, x = np.mgrid[0:height, 0:width]
            rgb = np.stack([(x * 8 + t * 10) % 256, (y * 12) % 256, np.full_like(x, 128)], axis=-1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def _read_video(av, path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), Fraction(stream.average_rate)


def test_cli_upscales_a_video_keeping_frame_count_and_fps(models_dir, tmp_path, capsys):
    av = pytest.importorskip("av", reason="PyAV (`pip install av`) is needed to write and read test videos")
    src, out = tmp_path / "clip.mp4", tmp_path / "clip_up.mp4"
    _write_video(av, src, frames=7, height=12, width=16, fps=12)
    code = _cli(models_dir, src, "-o", out, "--resolution", "16", "--batch-size", "5", "--temporal-overlap", "1",
                "--vae-tile-size", "0")
    assert code == 0, capsys.readouterr().err
    frames, fps = _read_video(av, out)
    assert frames.shape == (7, 16, 22, 3)  # 16*16/12 = 21.3: the nearest even width, for 4:2:0 video
    assert fps == 12


def test_cli_keeps_alpha_for_png(models_dir, tmp_path, capsys):
    src, out = tmp_path / "logo.png", tmp_path / "logo_up.png"
    rgba = np.zeros((9, 11, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.linspace(0, 255, 11, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(src)
    assert _cli(models_dir, src, "-o", out, "--resolution", "16") == 0, capsys.readouterr().err
    with Image.open(out) as img:
        assert img.mode == "RGBA" and img.size == (20, 16)
        alpha = torch.from_numpy(np.asarray(img)[..., 3].astype(np.float32))
    expected = F.interpolate(torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)[None, None], size=(16, 20),
                             mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)[0, 0] * 255
    assert (alpha - expected).abs().max() <= 0.5 + 1e-3  # uint8 rounding only


def test_cli_reports_bad_inputs_without_a_traceback(models_dir, tmp_path, capsys):
    src = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    assert _cli(models_dir, src, "-o", tmp_path / "a.png", "--batch-size", "6") == 2
    assert "batch_size must be 4n+1" in capsys.readouterr().err

    out = tmp_path / "exists.png"
    out.write_bytes(b"keep me")
    assert _cli(models_dir, src, "-o", out) == 2
    assert "exists; pass -y/--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"

    assert main([str(src), "-o", str(tmp_path / "b.png"), "--models-dir", str(tmp_path / "empty"), "--no-download",
                 "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "seedvr2_ema_3b_fp16.safetensors" in err and "downloads are off" in err

    assert _cli(models_dir, tmp_path / "missing.mp4") == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err


def test_cli_refuses_a_vae_given_as_the_dit(models_dir, tmp_path, capsys):
    src = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    code = main([str(src), "-o", str(tmp_path / "c.png"), "--models-dir", str(models_dir), "--dit",
                 "tiny_vae.safetensors", "--vae", "tiny_vae.safetensors", "--no-download", "--device", "cpu", "-q"])
    assert code == 2
    assert "is a SeedVR2 VAE, but a DiT" in capsys.readouterr().err


def test_help_lists_the_node_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--seed", "--resolution", "--max-resolution", "--batch-size", "--temporal-overlap",
                   "--color-correction", "--dit", "--vae", "--models-dir", "--device", "--dtype",
                   "--blocks-to-swap", "--vae-tile-size"):
        assert option in text


def test_plain_progress_bar_without_tqdm(capsys):
    from seedvr2.cli import ProgressBar

    bar = ProgressBar()
    bar._tqdm = None  # as when tqdm is not installed
    for done in range(3):
        bar.update("dit", done, 2)
    err = capsys.readouterr().err
    assert "DiT [" + "#" * 15 + "." * 15 + "] 1/2 batches" in err and err.endswith("2/2 batches\n")
