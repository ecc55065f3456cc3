"""Make test inputs and measure outputs with ComfyUI's own venv (it has Pillow, PyAV and numpy),
so the unit-test venv needs nothing beyond the standard library for this."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

_MAKE = r"""
import json, sys
from fractions import Fraction
import numpy as np
spec = json.loads(sys.argv[1])
t, h, w = spec["frames"], spec["height"], spec["width"]
yy, xx = np.mgrid[0:h, 0:w]
frames = []
for i in range(t):  # a moving diagonal gradient with a bright square: structure in space and time
    r = (xx * 255 // max(w - 1, 1) + 9 * i) % 256
    g = (yy * 255 // max(h - 1, 1)) % 256
    b = ((xx + yy + 5 * i) * 3) % 256
    f = np.stack([r, g, b], -1).astype(np.uint8)
    s = max(2, min(h, w) // 4); y0 = (2 * i) % max(h - s, 1); x0 = (3 * i) % max(w - s, 1)
    f[y0:y0 + s, x0:x0 + s] = 240
    frames.append(f)
path = spec["path"]
if path.endswith(".png"):
    from PIL import Image
    Image.fromarray(frames[0]).save(path)
else:
    import av
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=Fraction(spec["fps"]).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": "12"}
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
"""

_PROBE = r"""
import json, sys
out = []
for path in json.loads(sys.argv[1]):
    if path.endswith(".png"):
        from PIL import Image
        import numpy as np
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32)
            out.append({"path": path, "frames": 1, "width": im.width, "height": im.height,
                        "mean": float(a.mean()), "std": float(a.std())})
    else:
        import av, numpy as np
        with av.open(path) as c:
            vs = c.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
            a = np.stack(frames).astype(np.float32)
            out.append({"path": path, "frames": len(frames), "width": vs.codec_context.width,
                        "height": vs.codec_context.height, "fps": float(vs.average_rate or 0),
                        "mean": float(a.mean()), "std": float(a.std())})
print(json.dumps(out))
"""


def make_input(python: Path, path: Path, *, frames: int, width: int, height: int, fps: float = 8.0) -> Path:
    """Write a synthetic clip (.mp4, H.264) or still (.png) of the given size."""
    spec = {"path": str(path), "frames": frames, "width": width, "height": height, "fps": fps}
    proc = subprocess.run([str(python), "-c", _MAKE, json.dumps(spec)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"could not write {path}: {proc.stderr[-2000:]}")
    return path


def probe(python: Path, paths: list[Path]) -> list[dict]:
    """Frame count, size and pixel statistics of output files (.png or video)."""
    proc = subprocess.run([str(python), "-c", _PROBE, json.dumps([str(p) for p in paths])],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"could not read {paths}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)
