"""`--resume DIR`: an interrupted run restarts where it stopped and gives the uninterrupted output.

Interruptions are injected (an exception from `check_interrupt`, or KeyboardInterrupt from the
DiT step in the CLI); the DiT steps of the rerun are counted: only the missing batches run.
The folder is treated as untrusted: a file, a foreign folder, corrupt or linked batch files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import seedvr2.pipeline.run as run_module
from seedvr2.cli import main
from seedvr2.pipeline import UpscaleSettings, upscale
from seedvr2.pipeline.store import MANIFEST, ResumeError, ResumeStore
from test_stream import DIT_FILE, VAE_FILE, _decoded, models, write_video  # noqa: F401 - the models fixture
from tiny_models import write_tiny_models

SETTINGS = UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=2, seed=5)  # 13 frames: 4 batches
FRAMES = torch.rand(13, 10, 14, 3, generator=torch.Generator().manual_seed(2))


class Stop(Exception):
    pass


class Counted(list):
    """Batch indices of the DiT steps; `.state["stop_at"]`: interrupt at that many calls."""

    def __init__(self, items=(), state=None):
        super().__init__(items)
        self.state = state if state is not None else {"stop_at": None}


@pytest.fixture
def dit_calls(monkeypatch):
    """Counts the DiT steps (batch indices); `stop_after` makes the n-th next call interrupt."""
    calls, real = Counted(), run_module._denoise
    state = calls.state

    def counting(run, dit, pos_emb, batch, latent):
        if state["stop_at"] is not None and len(calls) == state["stop_at"]:
            raise KeyboardInterrupt
        calls.append(batch.index)
        return real(run, dit, pos_emb, batch, latent)

    monkeypatch.setattr(run_module, "_denoise", counting)
    return calls


def test_interrupted_run_resumes_with_only_the_missing_batches(models, tmp_path, dit_calls):
    reference = upscale(FRAMES, models, SETTINGS)
    dit_calls.clear()
    store = ResumeStore(tmp_path / "resume")
    done = []

    def interrupt_in_the_third_dit_call():  # checked before every DiT block: stops batch 2 half-way
        if len(dit_calls) == 3 and not done:
            done.append(1)
            raise Stop

    with pytest.raises(Stop):
        upscale(FRAMES, models, SETTINGS, resume=store, check_interrupt=interrupt_in_the_third_dit_call, window=3)
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == [
        "batch_000000.safetensors", "batch_000001.safetensors", MANIFEST]
    dit_calls.clear()
    out = upscale(FRAMES, models, SETTINGS, resume=ResumeStore(tmp_path / "resume"))
    assert dit_calls == [2, 3]  # only the missing batches ran the DiT
    assert torch.equal(out, reference)
    dit_calls.clear()
    assert torch.equal(upscale(FRAMES, models, SETTINGS, resume=ResumeStore(tmp_path / "resume")), reference)
    assert dit_calls == []  # everything stored: decode only


def test_a_resume_of_another_run_is_refused_naming_the_difference(models, tmp_path):
    upscale(FRAMES[:5], models, SETTINGS, resume=ResumeStore(tmp_path / "r"))
    with pytest.raises(ResumeError, match=r"different run \(settings.seed: stored 5, now 6\)"):
        upscale(FRAMES[:5], models, UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=2, seed=6),
                resume=ResumeStore(tmp_path / "r"))
    with pytest.raises(ResumeError, match=r"different run \(input.frames_sha256: stored"):
        upscale(FRAMES[1:6], models, SETTINGS, resume=ResumeStore(tmp_path / "r"))


def test_damaged_or_linked_batch_files_are_computed_again(models, tmp_path, dit_calls):
    folder = tmp_path / "r"
    reference = upscale(FRAMES, models, SETTINGS, resume=ResumeStore(folder))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    (folder / "batch_000000.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")  # corrupt
    data = bytearray((folder / "batch_000001.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of the tensor: the checksum catches it
    (folder / "batch_000001.safetensors").write_bytes(bytes(data))
    (folder / "batch_000002.safetensors").unlink()
    (folder / "batch_000002.safetensors").symlink_to(outside)  # a link: never read, replaced (not followed)
    (folder / "../escape.safetensors").write_bytes(b"x")  # names outside the folder are never consulted
    dit_calls.clear()
    assert torch.equal(upscale(FRAMES, models, SETTINGS, resume=ResumeStore(folder)), reference)
    assert dit_calls == [0, 1, 2]
    assert outside.read_bytes() == b"precious" and not (folder / "batch_000002.safetensors").is_symlink()
    assert not [p for p in folder.iterdir() if p.name.startswith(".partial-")]


def test_the_folder_is_checked_before_use(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResumeError, match="is a file, not a folder"):
        ResumeStore(tmp_path / "file")
    with pytest.raises(ResumeError, match="does not exist; create it first"):
        ResumeStore(tmp_path / "missing" / "deeper")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ResumeError, match="not empty and has no manifest.json"):
        ResumeStore(tmp_path / "photos").bind({"a": 1})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(ResumeError, match="corrupt"):
        ResumeStore(tmp_path / "bad").bind({"a": 1})
    with pytest.raises(ValueError):
        ResumeStore(tmp_path / "new").batch_path(-1)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(ResumeError, match="not writable"):
            ResumeStore(tmp_path / "ro")


def _cli(models_dir, *args):
    return main([*map(str, args), "--models-dir", str(models_dir), "--dit", DIT_FILE, "--vae", VAE_FILE,
                 "--no-download", "--device", "cpu", "-q", "--resolution", "16", "--vae-tile-size", "0",
                 "--temporal-overlap", "2"])


def test_cli_resume_after_ctrl_c(tmp_path, dit_calls, capsys):
    models_dir = tmp_path / "models"
    write_tiny_models(models_dir)
    src = write_video(tmp_path / "clip.mp4", frames=13)
    assert _cli(models_dir, src, "-o", tmp_path / "ref.mp4") == 0, capsys.readouterr().err
    dit_calls.clear()
    dit_calls.state["stop_at"] = 3  # Ctrl-C during the 4th batch's DiT step
    out, resume = tmp_path / "out.mp4", tmp_path / "resume"
    assert _cli(models_dir, src, "-o", out, "--resume", resume, "--window-batches", "1") == 130
    assert not out.exists() and len(list(resume.glob("batch_*"))) == 3
    dit_calls.clear()
    dit_calls.state["stop_at"] = None
    assert _cli(models_dir, src, "-o", out, "--resume", resume) == 0, capsys.readouterr().err
    assert dit_calls == [3]
    assert np.array_equal(_decoded(out), _decoded(tmp_path / "ref.mp4"))
    capsys.readouterr()
    code = _cli(models_dir, src, "-o", tmp_path / "other.mp4", "--resume", resume, "--seed", "9")
    err = capsys.readouterr().err
    assert code == 2 and "holds batches of a different run (settings.seed: stored 0, now 9)" in err and "Traceback" not in err
    assert json.loads((resume / MANIFEST).read_text())["key"]["settings"]["seed"] == 0
    other_models = tmp_path / "other_models"
    write_tiny_models(other_models, seed=1)  # same names, other weights
    code = _cli(other_models, src, "-o", tmp_path / "other.mp4", "--resume", resume)
    assert code == 2 and "different run (models.dit.sha256_head_tail: stored" in capsys.readouterr().err
    code = _cli(models_dir, src, "-o", tmp_path / "x.mp4", "--resume", src)
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_model_identity_for_resume_keys(tmp_path):
    from seedvr2.distributed import ModelSpec

    write_tiny_models(tmp_path)
    spec = ModelSpec(DIT_FILE, VAE_FILE, str(tmp_path), download=False)
    on_cpu, anywhere = spec.identity("cpu"), spec.identity(None)  # None: Ray workers pick their device
    assert on_cpu["dtype"] == "torch.float32" and on_cpu["device"] == "cpu"
    assert anywhere["dtype"] == "auto" and anywhere["device"] == "any"
    assert on_cpu["models"] == anywhere["models"] and on_cpu["models"]["dit"]["name"] == DIT_FILE
