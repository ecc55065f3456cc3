"""Model names from outside stay in the model folders, and errors never leak a foreign file's keys.

Two classes of problem (issue 10, "Model paths escape the model folders"):
* a name from a ComfyUI prompt must resolve (normalised, links followed) to a file inside a
  registered SeedVR2 folder, or be a known downloadable name; every other name gets the same
  message, which says nothing about the file system;
* a file that is not a SeedVR2 checkpoint (given explicitly to the CLI, or found by a listing)
  is refused with counts only, never its key names.
(The ComfyUI side runs in tests/acceptance/test_hostile.py against the real server.)
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from seedvr2.checkpoint import CheckpointError, read_header
from seedvr2.cli import main
from seedvr2.models import confined_model_path, downloadable_name, inspect_checkpoint, refusal

SECRET = "customer_db_password_hunter2"


@pytest.fixture()
def folders(tmp_path):
    """models/SEEDVR2 with a model and a sub-folder, an extra folder, and secrets outside both."""
    models = tmp_path / "ComfyUI" / "models" / "SEEDVR2"
    (models / "sub").mkdir(parents=True)
    (models / "mine.safetensors").write_bytes(b"x")
    (models / "sub" / "other.safetensors").write_bytes(b"x")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "extra.safetensors").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file({f"{SECRET}.weight": torch.zeros(2)}, str(outside / "x.safetensors"))
    (models / "escape.safetensors").symlink_to(outside / "x.safetensors")   # a link pointing out
    (models / "dirlink").symlink_to(outside, target_is_directory=True)       # a folder link pointing out
    return models, extra, outside


def test_only_names_inside_the_model_folders_resolve(folders):
    models, extra, outside = folders
    dirs = [models, extra]
    assert confined_model_path("mine.safetensors", dirs) == models.resolve() / "mine.safetensors"
    assert confined_model_path("sub/other.safetensors", dirs) == models.resolve() / "sub" / "other.safetensors"
    assert confined_model_path("extra.safetensors", dirs) == extra.resolve() / "extra.safetensors"
    hostile = [
        "../../../outside/x.safetensors", "sub/../../../outside/x.safetensors", str(outside / "x.safetensors"),
        str(models / "mine.safetensors"),  # absolute, even inside: prompts carry names, not paths
        "escape.safetensors", "dirlink/x.safetensors", "dirlink/../mine.safetensors",
        "sub/../mine.safetensors",  # resolves inside, but names with '..' are never honoured
        "..\\..\\outside\\x.safetensors", "C:\\models\\x.safetensors", "mine.safetensors\x00.png",
        "/etc/passwd", "missing.safetensors", "", None, 42, "sub", "pos_emb.pt", "x" * 5000 + ".safetensors",
    ]
    for name in hostile:
        assert confined_model_path(name, dirs) is None, name


def test_a_download_still_in_staging_is_never_a_model(folders):
    """A staged file is not verified yet (or was left by a process killed while hashing it): a
    prompt naming it is refused, whatever the spelling, while the same file outside staging loads."""
    models, extra, _ = folders
    staged = models / ".downloads" / "sub"
    staged.mkdir(parents=True)
    (staged / "seedvr2_ema_3b_fp16.safetensors").write_bytes(b"unverified")
    (models / ".downloads" / "seedvr2_ema_3b_fp16.safetensors").write_bytes(b"unverified")
    for name in (".downloads/seedvr2_ema_3b_fp16.safetensors", ".downloads/sub/seedvr2_ema_3b_fp16.safetensors",
                 ".downloads\\seedvr2_ema_3b_fp16.safetensors", "./.downloads/seedvr2_ema_3b_fp16.safetensors"):
        assert confined_model_path(name, [models, extra]) is None, name
    (models / "hidden").mkdir()
    (models / "hidden" / "ok.safetensors").write_bytes(b"x")
    assert confined_model_path("hidden/ok.safetensors", [models]) == models.resolve() / "hidden" / "ok.safetensors"


def test_only_exact_registry_names_of_the_loaders_kind_are_downloadable():
    assert downloadable_name("seedvr2_ema_3b_fp16.safetensors", "dit")
    assert downloadable_name("ema_vae_fp16.safetensors", "vae")
    assert downloadable_name("seedvr2_ema_7b-Q4_K_M.gguf", "dit")  # published quantized files too
    assert downloadable_name("seedvr2_7b_sharp_nvfp4.safetensors", "dit")
    assert not downloadable_name("seedvr2_ema_7b-Q4_K_M.gguf", "vae")
    assert not downloadable_name("seedvr2_ema_7b-Q5_K_M.gguf", "dit")  # no published SHA-256: not listed
    for name, kind in [("ema_vae_fp16.safetensors", "dit"), ("sub/seedvr2_ema_3b_fp16.safetensors", "dit"),
                       ("../seedvr2_ema_3b_fp16.safetensors", "dit"), ("pos_emb.pt", "dit"), (None, "dit")]:
        assert not downloadable_name(name, kind), name


def test_the_refusal_is_the_same_for_every_name_and_reveals_nothing(folders):
    models, _, outside = folders
    existing, missing = str(outside / "x.safetensors"), str(outside / "nothing_here.safetensors")
    texts = [str(refusal("model", name)).replace(repr(name), "NAME") for name in (existing, missing, "../a", None)]
    assert len(set(texts)) == 1, texts  # existence outside the folders is not revealed
    assert texts[0].startswith("model: NAME is not a model file in the SeedVR2 model folders")
    assert str(outside) not in texts[0] and SECRET not in texts[0]
    long = str(refusal("model", "a" * 1000))
    assert len(long) < 400


def test_foreign_files_are_refused_with_counts_never_key_names(folders, tmp_path, capsys):
    _, _, outside = folders
    foreign = outside / "x.safetensors"
    with pytest.raises(CheckpointError) as refused:
        inspect_checkpoint(foreign)
    assert SECRET not in str(refused.value) and "1 tensors in 1 top-level key group(s)" in str(refused.value)

    quant = outside / "q.safetensors"
    save_file({"vid_in.proj.weight": torch.zeros(2), f"{SECRET}.weight_scale": torch.zeros(1)}, str(quant))
    with pytest.raises(CheckpointError) as refused:
        inspect_checkpoint(quant)
    assert SECRET not in str(refused.value) and "1 unknown key group(s)" in str(refused.value)

    prefixed = outside / "p.safetensors"
    save_file({**{f"model.diffusion_model.blocks.{i}.w": torch.zeros(1) for i in range(6)},
               f"{SECRET}.w": torch.zeros(1)}, str(prefixed))
    with pytest.raises(CheckpointError) as refused:
        inspect_checkpoint(prefixed)
    assert SECRET not in str(refused.value) and "1 key group(s) outside" in str(refused.value)

    damaged = outside / "d.safetensors"
    header = ('{"%s": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}' % SECRET).encode()
    damaged.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)  # truncated data
    with pytest.raises(CheckpointError) as refused:
        read_header(damaged)
    assert SECRET not in str(refused.value) and "tensor #1 of 1" in str(refused.value)

    # The CLI accepts the explicit path (the user typed it) and reports it the same way.
    img = tmp_path / "img.png"
    pytest.importorskip("PIL.Image").new("RGB", (8, 8)).save(img)
    code = main([str(img), "-o", str(tmp_path / "o.png"), "--dit", str(foreign), "--models-dir",
                 str(tmp_path / "m"), "--no-download", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "not a SeedVR2 DiT or VAE checkpoint" in err and SECRET not in err, err
    assert os.path.exists(foreign)
