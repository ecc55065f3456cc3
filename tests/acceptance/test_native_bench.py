"""bench/e2e_native.py against the real ComfyUI 0.33.0: our model files in native's single-file layout
cover every key native's own SeedVR2 classes define (3B, 7B, the bench's `small` DiT, the VAE), with
native's shapes, and native's model detection reads the converted 3B/7B state dicts as the released
models. Runs in the host's venv (it imports `comfy`), on meta tensors: about a minute, mostly imports.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.acceptance, pytest.mark.newest_host_only]


def test_native_layout_covers_every_native_key(comfy_install, tmp_path: Path) -> None:
    if not (comfy_install.tree / "comfy" / "ldm" / "seedvr").is_dir():
        pytest.skip(f"ComfyUI {comfy_install.version} has no native SeedVR2 (added in 0.33.0)")
    out = tmp_path / "layout.json"
    proc = subprocess.run([str(comfy_install.python), str(REPO / "bench" / "e2e_native.py"), "--comfyui",
                           str(comfy_install.tree), "--check-layout", "--device", "cpu", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = {r["model"]: r for r in json.loads(out.read_text())}
    assert sorted(reports) == ["3b", "7b", "small"]
    expected_keys = {"3b": 637, "7b": 1130, "small": 61}  # native NaDiT's state dict, conditioning buffers included
    for name, r in reports.items():
        assert r["dit"]["native_keys"] == expected_keys[name] and r["vae"]["native_keys"] == 250, r
        for part in ("dit", "vae"):
            assert r[part]["missing"] == r[part]["unexpected"] == r[part]["shape_mismatch"] == [], (name, part, r[part])
    assert reports["3b"]["detected"]["vid_dim"] == 2560 and reports["3b"]["detected_ok"]
    assert reports["7b"]["detected"]["vid_dim"] == 3072 and reports["7b"]["detected_ok"]
