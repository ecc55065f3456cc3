"""Model management: the registry, listing, downloads (with a fake huggingface_hub), layouts, embeddings."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedvr2.checkpoint import CheckpointError, read_header
from seedvr2.dit import load_dit
from seedvr2.models import (MODEL_FILES, ModelFile, ModelFileError, ensure_model_file, inspect_checkpoint, list_models,
                            local_model_files, resolve_models)
from seedvr2.models import download as download_mod
from seedvr2.models import known_file, registry
from seedvr2.quant.published import PUBLISHED_QUANTIZED
from seedvr2.text_embeds import POS_EMB_SHAPE, load_pos_emb
from seedvr2.vae import load_vae
from conftest import DATA, SHARED
from tiny_models import DIT3B_TINY_CONFIG, VAE_TINY_CONFIG, write_tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("tiny") / "SEEDVR2")


# ------------------------------------------------------------------------------------------
# Registry and tiny-model configs against the shared references
# ------------------------------------------------------------------------------------------

GUIDE_TABLES = DATA / "guides" / "checkpoints_tables.md"  # verbatim lines of shared/guides/checkpoints.md


def test_registry_sizes_and_hashes_are_the_guide_values():
    tables = GUIDE_TABLES.read_text()
    rows = [line for line in tables.splitlines() if line.startswith("| ")]
    for entry in MODEL_FILES:
        row = [line for line in rows if entry.sha256 in line]
        assert row, f"{entry.name}: SHA-256 not in the guide's tables"
        assert f"`{Path(entry.path_in_repo).name}`" in row[0], (entry.name, row[0])
        if entry.size is not None:
            assert f"{entry.size:,}" in row[0], (entry.name, row[0])
        else:  # only a rounded size is published: the guide gives no exact byte count to use instead
            bytes_column = row[0].rstrip(" |").rsplit("|", 1)[1]
            assert "≈" in bytes_column and not re.search(r"\d,\d{3},\d{3},\d{3}", bytes_column), row[0]
            assert f"≈{entry.approx_size / 1e9:.2f}".rstrip("0").rstrip(".") in bytes_column, (entry.name, row[0])
        assert entry.repo in tables, entry.name
    assert len({m.name for m in MODEL_FILES}) == len(MODEL_FILES)
    guide = SHARED / "guides" / "checkpoints.md"
    if guide.is_file():  # beside the project's shared folder: the copy must still be the guide's text
        guide_lines = set(guide.read_text().splitlines())
        assert [row for row in rows if row not in guide_lines] == []


def test_every_published_quantized_file_of_the_guide_is_a_known_dit():
    """Each GGUF and Comfy-Org int8/mxfp8/nvfp4 row of the guide (all carry a SHA-256) is downloadable."""
    rows = [line for line in GUIDE_TABLES.read_text().splitlines() if line.startswith("| `")]
    quantized = [r for r in rows if re.search(r"\.gguf`|_(int8_convrot|mxfp8|nvfp4)\.safetensors`", r)]
    assert len(quantized) == 13
    for row in quantized:
        name = re.match(r"\| `([^`]+)`", row).group(1)
        entry = known_file(name)
        assert entry is not None and entry.kind == "dit" and entry.sha256 in row, name
        assert entry.url.endswith(("/" + name)) and "/resolve/main/" in entry.url, entry.url
    assert {p.name for p in PUBLISHED_QUANTIZED} <= {m.name for m in MODEL_FILES}


def test_tiny_model_configs_are_the_golden_ones(golden_dir):
    for name, config in (("dit3b_tiny_weights.safetensors", DIT3B_TINY_CONFIG),
                         ("vae_tiny_weights.safetensors", VAE_TINY_CONFIG)):
        _, metadata = read_header(golden_dir / name)
        assert json.loads(metadata["config"]) == config


def test_tiny_models_have_the_golden_key_sets(golden_dir, tiny):
    for ours, golden in ((tiny.dit, "dit3b_tiny_weights.safetensors"), (tiny.vae, "vae_tiny_weights.safetensors")):
        mine, _ = read_header(ours)
        ref, _ = read_header(golden_dir / golden)
        assert {k: v[1] for k, v in mine.items()} == {k: v[1] for k, v in ref.items()}


# ------------------------------------------------------------------------------------------
# Listing and finding
# ------------------------------------------------------------------------------------------

def test_listing_reads_names_only_and_adds_downloadable_models(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("my_dit.safetensors", "sub/ema_vae_custom.safetensors", "notes.txt", "pos_emb.pt",
                 "seedvr2_ema_3b_fp16.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / "partial.safetensors").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # any import attempt would fail
    dits = list_models([tmp_path], "dit")
    assert dits[:2] == ["my_dit.safetensors", "seedvr2_ema_3b_fp16.safetensors"]
    assert dits.count("seedvr2_ema_3b_fp16.safetensors") == 1 and "seedvr2_ema_7b_fp16.safetensors" in dits
    vaes = list_models([tmp_path], "vae")
    assert vaes[0] == "sub/ema_vae_custom.safetensors" and "ema_vae_fp16.safetensors" in vaes
    assert "partial.safetensors" not in " ".join(local_model_files([tmp_path]))


def test_unknown_missing_model_names_the_folder_and_the_choices(tmp_path):
    with pytest.raises(ModelFileError, match=r"'nope.safetensors' not found in .*known models.*seedvr2_ema_3b_fp16"):
        ensure_model_file("nope.safetensors", tmp_path)


# ------------------------------------------------------------------------------------------
# Downloads, with a fake huggingface_hub (no network in tests)
# ------------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 40


@pytest.fixture(autouse=True)
def _network_reachable(monkeypatch):
    """The fake hub needs no network: skip the reachability check (tests/test_download_offline.py covers it)."""
    monkeypatch.setattr("seedvr2.models.download.check_network", lambda *args, **kwargs: None)


class FakeHub(types.ModuleType):
    """hf_hub_download that can fail half-way and resumes from its partial file, like the real one."""

    __version__ = "0.30.0"

    def __init__(self, payload=PAYLOAD, fail_first=False):
        super().__init__("huggingface_hub")
        self.payload, self.fail_next, self.calls = payload, fail_first, []

    def hf_hub_download(self, repo_id, filename, *, revision=None, local_dir=None, **kwargs):
        partial = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{filename}.incomplete"
        partial.parent.mkdir(parents=True, exist_ok=True)
        offset = partial.stat().st_size if partial.exists() else 0
        self.calls.append(dict(repo_id=repo_id, filename=filename, revision=revision, offset=offset, **kwargs))
        with open(partial, "ab") as f:
            if self.fail_next:
                self.fail_next = False
                f.write(self.payload[offset:len(self.payload) // 2])
                raise ConnectionError("connection reset")
            f.write(self.payload[offset:])
        final = Path(local_dir) / filename
        final.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(final)
        return str(final)


@pytest.fixture()
def known_entry(monkeypatch):
    import hashlib

    entry = ModelFile("fake_model.safetensors", "dit", "someone/repo", "diffusion_models/fake_model.safetensors",
                      len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "abc123")
    monkeypatch.setitem(registry._BY_NAME, entry.name, entry)
    return entry


@pytest.fixture()
def unsized_entry(monkeypatch):
    """A registry entry whose exact size is not published (GGUF, Comfy-Org mxfp8/nvfp4): hash only."""
    import hashlib

    entry = ModelFile("fake_model-Q4_K_M.gguf", "dit", "someone/repo", "fake_model-Q4_K_M.gguf", None,
                      hashlib.sha256(PAYLOAD).hexdigest(), None, "", approx_size=2_000_000_000)
    monkeypatch.setitem(registry._BY_NAME, entry.name, entry)
    return entry


def test_an_entry_without_an_exact_size_is_checked_by_its_hash_alone(tmp_path, monkeypatch, unsized_entry, caplog):
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub(payload=PAYLOAD[::-1]))
    with pytest.raises(ModelFileError, match=r"does not match the published file: SHA-256 \w+ \(10,240 bytes\), "
                                             r"expected \w+ \(size not published exactly, about 2 GB\)"):
        ensure_model_file(unsized_entry.name, tmp_path)
    assert not (tmp_path / unsized_entry.name).exists()
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub())  # right bytes, size never compared
    with caplog.at_level("INFO", logger="seedvr2.models.download"):
        path = ensure_model_file(unsized_entry.name, tmp_path)
    assert path.read_bytes() == PAYLOAD and "verified and saved" in caplog.text
    assert "bytes, not the" not in caplog.text and "registry" not in caplog.text
    path.write_bytes(b"a user's own file of another size")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert ensure_model_file(unsized_entry.name, tmp_path) == path
    assert "published" not in caplog.text  # no size to compare a present file against


def test_the_manual_download_line_of_an_unsized_entry_gives_its_hash(tmp_path, unsized_entry):
    with pytest.raises(ModelFileError) as refused:
        ensure_model_file(unsized_entry.name, tmp_path, download=False)
    line = str(refused.value).splitlines()[-1]
    assert line.strip().startswith(f"{unsized_entry.name} (size not published exactly, about 2 GB, SHA-256 "
                                   f"{unsized_entry.sha256}) from {unsized_entry.url} into "), line
    assert "None" not in str(refused.value)


def test_download_resumes_verifies_and_lands_in_the_models_folder(tmp_path, monkeypatch, known_entry):
    hub = FakeHub(fail_first=True)
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with pytest.raises(ModelFileError, match="partial file is kept .* next attempt resumes"):
        ensure_model_file(known_entry.name, tmp_path)
    assert not (tmp_path / known_entry.name).exists()
    path = ensure_model_file(known_entry.name, tmp_path)
    assert path == tmp_path / known_entry.name and path.read_bytes() == PAYLOAD
    assert [c["offset"] for c in hub.calls] == [0, len(PAYLOAD) // 2]  # the second call resumed
    assert hub.calls[0]["repo_id"] == "someone/repo" and hub.calls[0]["revision"] == "abc123"
    assert hub.calls[0]["filename"] == "diffusion_models/fake_model.safetensors"
    assert "local_dir_use_symlinks" not in hub.calls[0]  # only for huggingface_hub < 0.23
    assert not (tmp_path / ".downloads" / "diffusion_models" / "fake_model.safetensors").exists()
    ensure_model_file(known_entry.name, tmp_path)  # present now: no further download
    assert len(hub.calls) == 2


def test_old_huggingface_hub_gets_real_files_not_symlinks(tmp_path, monkeypatch, known_entry):
    hub = FakeHub()
    hub.__version__ = "0.21.4"

    def old_signature(repo_id, filename, *, revision=None, local_dir=None, local_dir_use_symlinks="auto"):
        return FakeHub.hf_hub_download(hub, repo_id, filename, revision=revision, local_dir=local_dir,
                                       local_dir_use_symlinks=local_dir_use_symlinks)

    hub.hf_hub_download = old_signature
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    ensure_model_file(known_entry.name, tmp_path)
    assert hub.calls[0]["local_dir_use_symlinks"] is False


def test_a_download_with_the_wrong_hash_is_discarded(tmp_path, monkeypatch, known_entry):
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub(payload=PAYLOAD[::-1]))
    with pytest.raises(ModelFileError, match="does not match the published file.*discarded"):
        ensure_model_file(known_entry.name, tmp_path)
    assert not (tmp_path / known_entry.name).exists()
    assert not list((tmp_path / ".downloads").rglob("fake_model.safetensors"))


def test_an_existing_user_file_is_never_downloaded_over(tmp_path, monkeypatch, known_entry):
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    user_file = tmp_path / known_entry.name
    user_file.write_bytes(b"the user's own conversion")
    assert ensure_model_file(known_entry.name, tmp_path) == user_file
    assert user_file.read_bytes() == b"the user's own conversion" and hub.calls == []


def test_a_file_appearing_during_the_download_is_kept(tmp_path, monkeypatch, known_entry):
    class RacingHub(FakeHub):
        def hf_hub_download(self, *args, **kwargs):
            (tmp_path / known_entry.name).write_bytes(b"appeared meanwhile")
            return super().hf_hub_download(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "huggingface_hub", RacingHub())
    with pytest.raises(ModelFileError, match="appeared while"):
        download_mod.download_model_file(known_entry, tmp_path)
    assert (tmp_path / known_entry.name).read_bytes() == b"appeared meanwhile"


def test_no_downloads_when_switched_off_or_when_the_library_is_missing(tmp_path, monkeypatch, known_entry):
    with pytest.raises(ModelFileError, match="(?s)downloads are off.*huggingface.co/someone/repo/resolve/abc123"):
        ensure_model_file(known_entry.name, tmp_path, download=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelFileError, match="pip install huggingface_hub"):
        ensure_model_file(known_entry.name, tmp_path)


# ------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------

def _save(path, state, metadata=None):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def test_plain_dit_and_vae_are_recognised(tiny):
    dit = inspect_checkpoint(tiny.dit)
    assert (dit.kind, dit.layout, dit.family, dit.num_blocks, dit.dim, dit.pos_emb_key) == ("dit", "plain", "3b", 4,
                                                                                           64, None)
    assert dit.variant == "3B-type, 4 blocks, width 64"
    vae = inspect_checkpoint(tiny.vae)
    assert (vae.kind, vae.layout, vae.variant) == ("vae", "plain", "VAE")


def test_comfy_org_file_with_embedded_conditioning(tiny, tmp_path):
    state = load_file(str(tiny.dit))
    pos = torch.randn(11, 80).to(torch.bfloat16)
    state.update(positive_conditioning=pos, negative_conditioning=torch.randn(9, 80).to(torch.bfloat16))
    path = _save(tmp_path / "seedvr2_tiny_comfy.safetensors", state)
    layout = inspect_checkpoint(path)
    assert (layout.layout, layout.pos_emb_key) == ("comfy-org", "positive_conditioning")
    paths = resolve_models(path.name, str(tiny.vae), tmp_path, download=False)
    assert paths.pos_emb == path  # the embedding comes out of the DiT file, no pos_emb.pt needed
    assert torch.equal(load_pos_emb(paths.pos_emb), pos)
    load_dit(path, compute_dtype=torch.float32)  # the DiT loader skips the conditioning tensors


def test_comfyui_all_in_one_checkpoint_splits_dit_and_vae(tiny, tmp_path):
    state = {f"model.diffusion_model.{k}": v for k, v in load_file(str(tiny.dit)).items()}
    state.update({f"vae.{k}": v for k, v in load_file(str(tiny.vae)).items()})
    state["model.diffusion_model.positive_conditioning"] = torch.randn(11, 80).to(torch.bfloat16)
    path = _save(tmp_path / "all_in_one.safetensors", state, {"config": json.dumps(VAE_TINY_CONFIG)})
    layout = inspect_checkpoint(path)
    assert (layout.kind, layout.layout, layout.prefix, layout.has_vae) == ("dit", "comfy-saved",
                                                                          "model.diffusion_model.", True)
    assert layout.pos_emb_key == "model.diffusion_model.positive_conditioning"
    paths = resolve_models(path.name, None, tmp_path, download=False)
    assert paths.vae.prefix == "vae." and paths.vae.path == path and paths.pos_emb == path
    load_dit(path, compute_dtype=torch.float32)
    load_vae(path, dtype=torch.float32)


def test_bytedance_pth_is_recognised(tiny, tmp_path):
    path = tmp_path / "seedvr2_ema_tiny.pth"
    torch.save(load_file(str(tiny.dit)), path)
    layout = inspect_checkpoint(path)
    assert (layout.kind, layout.layout, layout.family) == ("dit", "bytedance-pth", "3b")


def test_damaged_gguf_and_unknown_layouts_are_refused_by_name(tmp_path):
    gguf = tmp_path / "seedvr2_ema_3b-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="seedvr2_ema_3b-Q4_K_M.gguf: not a readable GGUF file"):
        inspect_checkpoint(gguf)
    mlx = _save(tmp_path / "transformer.safetensors", {"transformer.proj_qkv_vid": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"transformer.safetensors: not a SeedVR2 DiT or VAE checkpoint.*Supported"):
        inspect_checkpoint(mlx)


def test_wrong_kind_in_each_loader_is_named(tiny):
    with pytest.raises(CheckpointError, match="is a SeedVR2 VAE, but a DiT"):
        resolve_models(str(tiny.vae), str(tiny.vae), tiny.models_dir, download=False)
    with pytest.raises(CheckpointError, match="is a SeedVR2 DIT, but a VAE"):
        resolve_models(str(tiny.dit), str(tiny.dit), tiny.models_dir, download=False)


# ------------------------------------------------------------------------------------------
# Text embeddings
# ------------------------------------------------------------------------------------------

def test_reference_text_embedding_loads_from_safetensors(reference_dir):
    emb = load_pos_emb(reference_dir / "text_embeds.safetensors")
    assert tuple(emb.shape) == POS_EMB_SHAPE and emb.dtype == torch.bfloat16


def test_pos_emb_pt_is_found_beside_the_dit(tiny, tmp_path):
    paths = resolve_models(tiny.dit.name, tiny.vae.name, tmp_path / "elsewhere", download=False,
                           extra_dirs=[tiny.models_dir])
    assert paths.pos_emb == tiny.pos_emb
    assert tuple(load_pos_emb(paths.pos_emb).shape) == (11, 80)


def test_a_file_without_an_embedding_is_named(tiny):
    with pytest.raises(CheckpointError, match="tiny_vae.safetensors: no positive text embedding"):
        load_pos_emb(tiny.vae)
