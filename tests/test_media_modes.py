"""Silent wrong results (issue 10) and player-compatible video (issue 11): each either comes out
right or ends in a message, never as a plausible-looking wrong file.

Classes: pixel formats read at their real range (16-bit gray, VP9 alpha), encoder settings
within the encoder's range (--crf), non-finite model output (NaN weights or embedding), and
video sides even by default (4:2:0) with --exact-size to keep an odd size.
"""
from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest
import torch

from seedvr2.cli import main
from seedvr2.pipeline import NonFiniteOutputError, UpscaleInputError, UpscaleModels, UpscaleSettings, upscale
from seedvr2.video_io import MediaError, VideoWriter, check_crf, read_media, read_video
from tiny_models import write_tiny_models

av = pytest.importorskip("av", reason="PyAV (`pip install av`) is needed for video tests")
Image = pytest.importorskip("PIL.Image", reason="Pillow is needed for image tests")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media") / "models"
    write_tiny_models(folder)
    return folder


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # what Pillow gives for 16-bit PNG
    frames, fps = read_media(path)
    assert fps is None and frames.shape == (1, 8, 8, 3) and frames.dtype == torch.uint8
    expected = np.rint(values / 65535 * 255).astype(np.uint8)
    for c in range(3):
        assert np.array_equal(frames[0, ..., c].numpy(), expected)


def _alpha_webm(path, frames=3, size=32):
    alpha = np.linspace(0, 255, size).astype(np.uint8)
    with VideoWriter(path, Fraction(10)) as writer:
        rgba = np.zeros((frames, size, size, 4), np.uint8)
        rgba[..., 0] = 200
        rgba[..., 3] = alpha[None, None, :]
        writer.write(0, torch.from_numpy(rgba))
    return alpha


def test_vp9_alpha_is_decoded_or_warned(tmp_path, monkeypatch, caplog):
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV build has no libvpx-vp9")
    path = tmp_path / "alpha.webm"
    alpha = _alpha_webm(path)
    frames, _ = read_video(path)
    assert frames.shape == (3, 32, 32, 4)
    assert (frames[..., 3].float() - torch.from_numpy(alpha).float()[None, None, :]).abs().max() <= 4  # lossy codec

    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libvpx-vp9"})
    with caplog.at_level(logging.WARNING):
        frames, _ = read_video(path)
    assert frames.shape[-1] == 3
    assert "has an alpha channel but this PyAV build has no libvpx-vp9 decoder" in caplog.text


def test_crf_is_bounded_to_the_encoders_range(tmp_path, capsys):
    for crf, path in [(0, "a.mp4"), (51, "a.mkv"), (63, "a.webm")]:
        check_crf(crf, path)
    for crf, path, message in [(52, "a.mp4", "0 to 51 for H.264"), (-1, "a.mov", "0 to 51"),
                               (64, "a.webm", "0 to 63 for VP9"), (True, "a.mp4", "got True")]:
        with pytest.raises(MediaError, match=message):
            check_crf(crf, path)
    with pytest.raises(MediaError, match="crf must be"):
        VideoWriter(tmp_path / "x.mp4", Fraction(25), crf=99)
    src = tmp_path / "in.webm"
    _alpha_webm(src, frames=1)
    code = main([str(src), "-o", str(tmp_path / "o.webm"), "--crf", "70", "--models-dir", str(tmp_path / "none"),
                 "--no-download", "--device", "cpu", "-q"])
    assert code == 2 and "--crf must be an integer from 0 to 63 for VP9" in capsys.readouterr().err


def _tiny_models(models_dir, *, nan_dit=False, nan_vae_decoder=False, nan_pos_emb=False):
    from seedvr2.dit import load_dit
    from seedvr2.text_embeds import load_pos_emb
    from seedvr2.vae import load_vae

    dit = load_dit(models_dir / "tiny_dit_3b.safetensors", compute_dtype=torch.float32)
    vae = load_vae(models_dir / "tiny_vae.safetensors", dtype=torch.float32)
    pos_emb = load_pos_emb(models_dir / "pos_emb.pt")
    with torch.no_grad():
        if nan_dit:
            dit.blocks[1].state_dict(keep_vars=True)[next(iter(dit.blocks[1].state_dict()))].fill_(float("nan"))
        if nan_vae_decoder:
            next(vae.decoder.parameters()).fill_(float("inf"))
        if nan_pos_emb:
            pos_emb[0, 0] = float("nan")
    return UpscaleModels(dit, vae, pos_emb, "cpu")


@pytest.mark.parametrize("fault,error,message", [
    ("nan_dit", NonFiniteOutputError, r"^the DiT produced NaN or infinite values \(batch 1, frames 0..0\).*corrupt or "
                                      r"wrongly converted DiT checkpoint.*fp16 overflow: use dtype bf16"),
    ("nan_vae_decoder", NonFiniteOutputError, r"^the VAE decode produced NaN or infinite values.*VAE checkpoint"),
    ("nan_pos_emb", UpscaleInputError, r"^pos_emb \(the text embedding\) contains NaN"),
])
def test_non_finite_model_output_is_an_error_not_a_black_picture(models_dir, fault, error, message):
    models = _tiny_models(models_dir, **{fault: True})
    with pytest.raises(error, match=message):
        upscale(torch.rand(1, 12, 16, 3), models, UpscaleSettings(resolution=16, batch_size=1))


def _cli(models_dir, *args):
    return main([*map(str, args), "--models-dir", str(models_dir), "--dit", "tiny_dit_3b.safetensors",
                 "--vae", "tiny_vae.safetensors", "--no-download", "--device", "cpu"])


def _write_video(path, frames=2, height=12, width=16):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), 99, np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode(None))


def _video_info(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, stream.codec_context.pix_fmt


def test_video_output_has_even_sides_unless_exact_size_is_asked(models_dir, tmp_path, caplog):
    src = tmp_path / "clip.mp4"
    _write_video(src)  # 16x12: resolution 16 gives an exact width of 21.33
    with caplog.at_level(logging.INFO, logger="seedvr2"):
        assert _cli(models_dir, src, "-o", tmp_path / "even.mp4", "--resolution", "16", "--batch-size", "1") == 0
    assert _video_info(tmp_path / "even.mp4") == (22, 16, "yuv420p")
    assert "video output 21x16 -> 22x16: even sides for 4:2:0 video (yuv420p)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seedvr2"):
        assert _cli(models_dir, src, "-o", tmp_path / "exact.mp4", "--resolution", "16", "--batch-size", "1",
                    "--exact-size") == 0
    assert _video_info(tmp_path / "exact.mp4") == (21, 16, "yuv444p")
    assert "21x16 has an odd side: writing 4:4:4 (yuv444p), which many players cannot play" in caplog.text
    # images keep the exact size
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(img)
    assert _cli(models_dir, img, "-o", tmp_path / "img_up.png", "--resolution", "16", "-q") == 0
    with Image.open(tmp_path / "img_up.png") as out:
        assert out.size == (21, 16)
