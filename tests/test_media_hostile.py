"""Hostile inputs to the lazy reader and the image reader (review of issue 15).

* A video whose frame size changes mid-stream (two MPEG-TS streams joined, as a capture that
  switched resolution) is an error naming the input and the frame, from `VideoSource.read`
  (even for a read entirely after the change) and from `read_video`; never a bare numpy error
  or frames of another size reaching the pipeline.
* A video rewritten between opening and reading is an error (never frames of two versions).
* An image whose header claims a decompression bomb is a one-line error, not a traceback.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from seedvr2.cli import main
from seedvr2.video_io import MediaError, VideoSource, read_video

av = pytest.importorskip("av", reason="PyAV is needed to write test videos")


def _ts(path: Path, frames: int, height: int, width: int) -> bytes:
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.full((height, width, 3), i * 20, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path.read_bytes()


@pytest.fixture
def size_change(tmp_path) -> Path:
    joined = tmp_path / "switch.ts"
    joined.write_bytes(_ts(tmp_path / "a.ts", 4, 16, 16) + _ts(tmp_path / "b.ts", 4, 24, 32))
    return joined


@pytest.mark.parametrize("start,stop", [(0, 8), (4, 8)], ids=["across", "after"])
def test_a_frame_size_change_is_an_error_naming_the_frame(size_change, start, stop):
    source = VideoSource(size_change)
    assert source.shape == (8, 16, 16, 3)
    with pytest.raises(MediaError, match=r"switch\.ts: frame 4 is 32x24, the first frame 16x16"):
        source.read(start, stop)
    with pytest.raises(MediaError, match=r"switch\.ts: frame 4 is 32x24"):
        read_video(size_change)


def test_a_video_rewritten_after_opening_is_an_error(tmp_path):
    path = tmp_path / "clip.ts"
    path.write_bytes(_ts(tmp_path / "a.ts", 4, 16, 16))
    source = VideoSource(path)
    path.write_bytes(_ts(tmp_path / "b.ts", 6, 16, 16))  # re-exported meanwhile: more frames, other content
    with pytest.raises(MediaError, match="clip.ts: the file changed since it was opened"):
        source.read(0, 4)


def test_a_decompression_bomb_header_is_one_line(tmp_path, capsys):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    code = main([str(bomb), "-o", str(tmp_path / "out.png"), "--models-dir", str(tmp_path / "none"),
                 "--no-download", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "bomb.png: the image header claims more pixels" in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["bomb.png"]
