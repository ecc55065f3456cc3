"""Disk full while the CLI streams its output (review of issue 15).

The writer runs on `ThreadedSink`'s thread; its error must reach the user as one line naming the
output (not the hidden temporary file, not a bare "No space left on device"), the run must end
(no hang), and nothing may be left at the target or beside it.
"""
from __future__ import annotations

import time

import pytest
import torch

import seedvr2.video_io as video_io
from seedvr2.cli import main
from test_cli_safety import cli_args, models_dir, partials, write_video  # noqa: F401 - the models_dir fixture

Image = pytest.importorskip("PIL.Image")


class DiskFull:
    """Wraps an av output container: the n-th mux raises ENOSPC, as a full disk would."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def mux(self, packets):
        self.calls += 1
        if self.calls >= self.at:
            raise OSError(28, "No space left on device")
        return self.inner.mux(packets)

    def close(self):
        self.inner.close()


def _run(models_dir, tmp_path, out, capsys):
    src = write_video(tmp_path / "clip.mp4", frames=13)
    code = main(cli_args(models_dir, src, "-o", out, "-q", "--resolution", "16", "--vae-tile-size", "0",
                         "--batch-size", "5"))
    return code, capsys.readouterr().err


def test_disk_full_while_encoding_names_the_output_and_leaves_nothing(models_dir, tmp_path, capsys, monkeypatch):
    real_open = video_io.VideoWriter._open

    def opening(self, *args):
        real_open(self, *args)
        self._container = DiskFull(self._container, at=3)

    monkeypatch.setattr(video_io.VideoWriter, "_open", opening)
    out = tmp_path / "out.mp4"
    code, err = _run(models_dir, tmp_path, out, capsys)
    assert code == 2 and f"error: {out}: writing the video failed (No space left on device)" in err, err
    assert "Traceback" not in err and not out.exists() and partials(tmp_path) == []


def test_disk_full_while_writing_frames_names_the_output_and_leaves_nothing(models_dir, tmp_path, capsys,
                                                                           monkeypatch):
    real_save, saved = Image.Image.save, []

    def saving(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) == 7:
            raise OSError(28, "No space left on device", str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", saving)
    out = tmp_path / "frames.png"
    code, err = _run(models_dir, tmp_path, out, capsys)
    assert code == 2 and f"error: {out}: writing frame files failed (No space left on device)" in err, err
    assert "partial" not in err and partials(tmp_path) == [] and not list(tmp_path.glob("frames_*.png"))


@pytest.mark.parametrize("frames,clash", [(1, "out.png"), (4, "out_00002.png")], ids=["single", "sequence"])
def test_a_file_appearing_at_the_target_keeps_both_and_the_message_is_true(tmp_path, frames, clash):
    """Without -y a file that appears at a target during the run is kept; the error names where the
    run's result is, and it must really be there (it was deleted on the way out)."""
    from seedvr2.outputs import AtomicOutputs, plan_outputs
    from seedvr2.video_io import MediaError

    source = tmp_path / "in.mp4"
    source.write_bytes(b"input")
    plan = plan_outputs(source, tmp_path / "out.png", frames=frames, input_is_video=True, overwrite=False)
    with pytest.raises(MediaError) as info:
        with AtomicOutputs(plan) as files:
            for temp in files.temps:
                temp.write_bytes(b"result of a long run")
            (tmp_path / clash).write_bytes(b"someone else's")
            files.commit()
    message = str(info.value)
    kept = message.split("the result is at ")[1].split(" ")[0]
    assert (tmp_path / clash).read_bytes() == b"someone else's"
    assert kept.endswith(".png") and open(kept, "rb").read() == b"result of a long run"
    if frames > 1:
        assert "and 1 more frame(s) of this run" in message and len(partials(tmp_path)) == 2



@pytest.mark.parametrize("interrupt_in", ["join", "put"])
def test_ctrl_c_while_close_waits_stops_the_writer_before_returning(interrupt_in):
    """Ctrl-C during `close()` (waiting for the last batches: in the join, or in the put of the
    stop mark on a full queue) must not leave the writer thread running: the video writer is
    closed next, from the main thread, and PyAV's container must not be used from two threads
    at once. The worker finishes the batch it is writing and drops the rest."""
    import threading

    from seedvr2.pipeline.output import ThreadedSink
    from test_speed_sink import SlowSink, _frames

    gate = threading.Event()
    inner = SlowSink(gate=gate)
    sink = ThreadedSink(inner, depth=2)
    starts = (0, 2) if interrupt_in == "join" else (0, 2, 4)  # 0 is held at the gate; the rest wait (full: put)
    for start in starts:
        sink.write(start, _frames(start))
    owner = sink._thread if interrupt_in == "join" else sink._queue
    real, calls = getattr(owner, interrupt_in), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            threading.Timer(0.2, gate.set).start()
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    setattr(owner, interrupt_in, interrupted)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        sink.close()
    assert not sink._thread.is_alive() and time.perf_counter() - started < 3
    assert [w[0] for w in inner.writes] == [0]


def test_leaving_the_video_writer_on_an_error_does_not_flush_the_encoder(tmp_path):
    """After Ctrl-C or an error the output is discarded: the encoder's buffered frames are not
    encoded (seconds at 4K), and a second error cannot hide the first."""
    from seedvr2.video_io import VideoWriter

    class Recording:
        def __init__(self, inner):
            self.inner, self.muxed, self.closed = inner, 0, False

        def mux(self, packets):
            self.muxed += 1
            raise OSError(28, "No space left on device")

        def close(self):
            self.closed = True
            self.inner.close()

    writer = VideoWriter(tmp_path / "out.mp4", 12)
    with pytest.raises(KeyboardInterrupt):
        with writer:
            writer.write(0, torch.zeros(3, 16, 16, 3, dtype=torch.uint8))
            writer._container = recording = Recording(writer._container)
            raise KeyboardInterrupt
    assert recording.muxed == 0 and recording.closed and writer._container is None


def test_ctrl_c_during_the_final_renames_never_leaves_half_an_image_sequence(tmp_path):
    """SIGINT arriving while the frames are renamed into place is delivered after the last one."""
    import os
    import signal

    import seedvr2.outputs as outputs
    from seedvr2.outputs import AtomicOutputs, plan_outputs

    source = tmp_path / "in.mp4"
    source.write_bytes(b"input")
    plan = plan_outputs(source, tmp_path / "out.png", frames=5, input_is_video=True, overwrite=True)
    real_replace, done = os.replace, []

    def replace(a, b):
        real_replace(a, b)
        done.append(b)
        if len(done) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C half way through

    with pytest.raises(KeyboardInterrupt):
        with AtomicOutputs(plan) as files:
            for temp in files.temps:
                temp.write_bytes(b"frame")
            outputs.os.replace = replace
            try:
                files.commit()
            finally:
                outputs.os.replace = real_replace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"] + [f"out_{i:05d}.png" for i in range(5)]
