"""Writes `seedvr2_blockswap_sample.mp4` and `seedvr2_blockswap_sample.png`, the small clip and still
the example workflows open with (the still is the clip's middle frame).

Made here, not taken from anywhere: a soft, low-resolution synthetic scene (a lit sphere moving
over a checkered floor, with a caption), blurred and downscaled as an upscaler's typical input.
H.264 yuv420p, 320x240, 17 frames at 8 fps (17 = 4n+1 frames, one SeedVR2 batch), ~2 s.

    python assets/make_sample_clip.py [FOLDER]   # needs numpy, Pillow and PyAV (`av`)
"""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLIP, STILL = "seedvr2_blockswap_sample.mp4", "seedvr2_blockswap_sample.png"
W, H, FRAMES, FPS = 320, 240, 17, 8


def frame(i: int) -> np.ndarray:
    scale = 4  # draw at 4x, then downscale: anti-aliased but soft
    w, h = W * scale, H * scale
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = h * 0.55
    sky = np.stack([90 + 60 * yy / horizon, 140 + 50 * yy / horizon, 210 + 30 * yy / horizon], -1)
    depth = np.maximum(yy - horizon, 1.0)
    u = (xx - w / 2) / depth * 60 + i * 3.0
    v = 4000.0 / depth + i * 1.5
    checker = ((np.floor(u / 40) + np.floor(v / 40)) % 2)[..., None]
    floor = np.where(checker > 0, [200, 190, 160], [70, 90, 60]).astype(np.float32)
    floor *= np.clip(0.4 + depth / h, 0.4, 1.0)[..., None]
    img = np.where((yy > horizon)[..., None], floor, sky)
    cx, cy, r = w * (0.25 + 0.5 * i / (FRAMES - 1)), horizon + h * 0.08, h * 0.16
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    light = np.clip(1.0 - np.sqrt((xx - cx + r * 0.4) ** 2 + (yy - cy + r * 0.4) ** 2) / (1.6 * r), 0.15, 1.0)
    ball = np.stack([230 * light + 20, 80 * light + 10, 60 * light + 10], -1)
    img = np.where((dist < r)[..., None], ball, img)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    draw.text((w * 0.05, h * 0.06), "SeedVR2 BlockSwap sample", fill=(255, 255, 255), font_size=19 * scale)
    pil = pil.filter(ImageFilter.GaussianBlur(scale * 0.8)).resize((W, H), Image.BILINEAR)
    return np.asarray(pil)


def main(folder: Path) -> None:
    Image.fromarray(frame(FRAMES // 2)).save(folder / STILL, optimize=True)
    with av.open(str(folder / CLIP), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "26", "preset": "slow"}
        for i in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
