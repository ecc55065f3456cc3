"""Streaming on one machine: lazy input, batch outputs joined in any order, bounded host memory.

The streamed run (a `VideoSource` read window by window, frames written as soon as they are
final) must give exactly the all-in-memory run's frames; the joiner must hold no more than the
outputs that arrived early plus the crossfade's held frames, whatever the video's length.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from seedvr2.batching import Crossfade, plan_batches
from seedvr2.distributed import ModelSpec
from seedvr2.pipeline import TensorSink, UpscaleSettings, VAETiling, upscale
from seedvr2.pipeline.output import to_output
from seedvr2.pipeline.stream import BatchOutput, Joiner, TensorSource, split_for_crossfade
from tiny_models import DIT_FILE, VAE_FILE, write_tiny_models

av = pytest.importorskip("av", reason="PyAV (`pip install av`) is needed to write and read test videos")

SETTINGS = UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=2, seed=3)  # 13 frames: 4 batches


@pytest.fixture(scope="module")
def models():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        write_tiny_models(folder)
        spec = ModelSpec(DIT_FILE, VAE_FILE, str(folder), vae_tiling=VAETiling(None, 64, 4), download=False)
        loaded, _ = spec.load("cpu")
        yield loaded


def write_video(path: Path, frames: int, height: int = 12, width: int = 16) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            y, x = np.mgrid[0:height, 0:width]
            rgb = np.stack([(x * 8 + t * 10) % 256, (y * 12 + t * 3) % 256, np.full_like(x, 128)], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


class CountingSource:
    """A lazy `FrameSource` over a tensor (reads copy, like a decoder); records every read."""

    def __init__(self, frames):
        self.frames, self.shape, self.dtype = frames, tuple(frames.shape), frames.dtype
        self.widest, self.reads = 0, []

    def read(self, start, stop):
        self.widest = max(self.widest, stop - start)
        self.reads.append((start, stop))
        return self.frames[start:stop].clone()

    def identity(self):
        return TensorSource(self.frames).identity()


def test_streamed_video_equals_the_all_in_memory_run(models, tmp_path):
    from seedvr2.video_io import VideoSource, read_video

    path = write_video(tmp_path / "clip.mp4", frames=13)
    frames, _ = read_video(path)
    whole = upscale(frames, models, SETTINGS, output_dtype=torch.uint8)  # one window: today's order
    with VideoSource(path) as source:
        sink = TensorSink(13, *whole.shape[1:], torch.uint8)
        upscale(source, models, SETTINGS, sink=sink, window=1)
    assert torch.equal(sink.result(), whole)


def test_windows_do_not_change_rgba_float_output(models):
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(11, 10, 14, 4, generator=gen)
    settings = UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=3, color_correction="adain")
    whole = upscale(frames, models, settings)
    for window in (1, 2):
        assert torch.equal(upscale(frames, models, settings, window=window), whole), window


def _reference_crossfade(plan, outputs, dtype):
    """The single-process join before streaming: whole float batches through one Crossfade."""
    fade, out = Crossfade(), []
    for i, b in enumerate(plan):
        fade.start_batch(b, hold=plan[i + 1].overlap if i + 1 < len(plan) else 0)
        out += [to_output(f, dtype) for _, f in fade.push(outputs[i])]
        fade.end_batch()
    fade.finish()
    return torch.cat(out)


class ListSink:
    dtype = torch.uint8

    def __init__(self):
        self.frames, self.starts = [], []

    def write(self, start, frames):
        self.starts.append(start)
        self.frames.append(frames.permute(0, 3, 1, 2).clone())


@pytest.mark.parametrize("frames,batch,overlap", [(13, 5, 2), (9, 5, 4), (17, 5, 0), (12, 9, 3)])
def test_joiner_in_any_order_equals_the_single_process_crossfade(frames, batch, overlap):
    plan = plan_batches(frames, batch, overlap)
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.rand(b.length, 3, 4, 5, generator=gen) for b in plan]
    expected = _reference_crossfade(plan, outputs, torch.uint8)
    shuffled = list(range(len(plan)))
    random.Random(0).shuffle(shuffled)
    sink = ListSink()
    joiner = Joiner(plan, sink)
    for i in shuffled:
        b = plan[i]
        hold = plan[i + 1].overlap if i + 1 < len(plan) else 0
        pieces = [p for a in range(0, b.length, 2)  # in chunks, as the decode makes them
                  for p in split_for_crossfade(outputs[i][a:a + 2], b.overlap - a, hold - (b.length - min(a + 2, b.length)),
                                               torch.uint8)]
        joiner.add(BatchOutput(b, pieces))
    joiner.finish()
    assert sink.starts == sorted(sink.starts)
    assert torch.equal(torch.cat(sink.frames), expected)


def test_joiner_refuses_a_batch_twice():
    plan = plan_batches(9, 5, 1)
    joiner = Joiner(plan, ListSink())
    out = BatchOutput(plan[1], [torch.rand(5, 3, 2, 2)])
    joiner.add(out)
    with pytest.raises(RuntimeError, match="delivered twice"):
        joiner.add(out)


def _streamed_run(models, monkeypatch, length):
    """Upscale `length` frames window by window into a sink that keeps nothing; what was held."""
    import seedvr2.pipeline.run as run_module

    frames = torch.rand(length, 10, 14, 3, generator=torch.Generator().manual_seed(length))
    source = CountingSource(frames)
    joiners = []

    class Discard:
        dtype = torch.uint8

        def write(self, start, f):
            pass

    def spy(*args, **kwargs):
        joiners.append(Joiner(*args, **kwargs))
        return joiners[-1]

    monkeypatch.setattr(run_module, "Joiner", spy)
    upscale(source, models, UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=1), sink=Discard(), window=2)
    return source.widest, joiners[0].peak_held_bytes, len(source.reads)


def test_host_memory_held_does_not_grow_with_the_video_length(models, monkeypatch):
    short = _streamed_run(models, monkeypatch, 13)   # 3 batches: two windows
    long = _streamed_run(models, monkeypatch, 33)    # 8 batches: four windows
    assert long[2] == 4 + 1  # one read per window (plus the first frame's check)
    assert long[0] == short[0] <= 2 * 5  # never more than one window of input frames
    # the joiner holds at most one batch's output (float32 at worst) and the held overlap, whatever the length
    frame = 3 * 16 * 22 * 4  # float32 RGB at the 22x16 output
    assert 0 < long[1] == short[1] <= (5 + 1) * frame


def _cli(models_dir, *args):
    from seedvr2.cli import main

    return main([*map(str, args), "--models-dir", str(models_dir), "--dit", DIT_FILE, "--vae", VAE_FILE,
                 "--no-download", "--device", "cpu", "-q", "--resolution", "16", "--vae-tile-size", "0"])


def _decoded(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def test_cli_streams_video_and_image_sequences_with_the_same_frames(tmp_path, capsys):
    from PIL import Image

    models_dir = tmp_path / "models"
    write_tiny_models(models_dir)
    src = write_video(tmp_path / "clip.mp4", frames=11)
    one, many = tmp_path / "one.mp4", tmp_path / "many.mp4"
    assert _cli(models_dir, src, "-o", many, "--temporal-overlap", "2") == 0, capsys.readouterr().err
    assert _cli(models_dir, src, "-o", one, "--temporal-overlap", "2", "--window-batches", "1") == 0
    assert np.array_equal(_decoded(one), _decoded(many))
    assert _cli(models_dir, src, "-o", tmp_path / "seq.png", "--temporal-overlap", "2", "--window-batches", "1") == 0
    names = sorted(p.name for p in tmp_path.glob("seq_*.png"))
    assert names == [f"seq_{i:05d}.png" for i in range(11)]
    assert np.asarray(Image.open(tmp_path / "seq_00000.png")).shape == (16, 21, 3)  # images keep the exact size
    assert not list(tmp_path.glob(".*partial*"))


def test_readme_long_video_section_documents_real_options():
    import re

    from seedvr2.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## Long videos, resume and several GPUs \(Ray\)\n(.*?)(?=^## )", readme, re.M | re.S).group(1)
    section = re.sub(r"`ray start[^`]*`", "", section)  # Ray's own command line
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", section))
    known = {o for action in build_parser()._actions for o in action.option_strings}
    assert {"--workers", "--ray-address", "--resume", "--window-batches"} <= documented
    assert documented <= known, documented - known
    for name in ("upscale_on_ray", "RayWorkers", "ModelSpec", "ResumeStore"):
        assert f"{name}" in section


def test_ray_is_imported_only_by_a_distributed_run(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    code = ("import sys, seedvr2, seedvr2.cli, seedvr2.distributed, seedvr2.pipeline; "
            "assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    from seedvr2.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    src = write_video(tmp_path / "clip.mp4", frames=2)
    assert main([str(src), "-o", str(tmp_path / "o.mp4"), "--workers", "2", "--no-download"]) == 2
    assert 'need Ray: pip install ".[ray]"' in capsys.readouterr().err


def test_ray_run_refuses_an_output_larger_than_memory_before_starting_workers(tmp_path):
    from seedvr2.pipeline import UpscaleInputError
    from seedvr2.distributed import upscale_on_ray

    pytest.importorskip("ray")
    spec = ModelSpec(DIT_FILE, VAE_FILE, str(tmp_path), download=False)  # never loaded
    with pytest.raises(UpscaleInputError, match="of host memory"):
        upscale_on_ray(torch.zeros(4, 4, 512, 3), spec, UpscaleSettings(resolution=10**9), workers=1)

