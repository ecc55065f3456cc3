"""Missing model files and no network: reported fast, completely, once, without debris.

Classes of problem (issue 10 "Offline download", issue 11 "Preflight"):
* every file a run needs (DiT, VAE, pos_emb.pt) is located before anything large loads, and
  all missing ones are reported in ONE message with name, size, URL and folder;
* no network is detected within seconds (real huggingface_hub, endpoint pointed at a closed
  localhost port: no test touches the real network);
* a failed download leaves no lock/cache debris, and mentions a kept partial file only when
  there is one;
* each hub log line (its retries) is printed once.
"""
from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path

import pytest

import seedvr2.models.download as download
from seedvr2.cli import main
from seedvr2.models import (DEFAULT_DIT, DEFAULT_VAE, POS_EMB_FILE, ModelFileError, known_file, preflight)
from tiny_models import write_tiny_models

hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub (the download extra) is needed")
import huggingface_hub.constants  # noqa: E402  (lazy submodules; importing the HTTP layer gives the hub's
import huggingface_hub.utils._http  # noqa: E402  logger its own stderr handler, as a real download does)


@pytest.fixture()
def offline(monkeypatch):
    """The hub endpoint is a localhost port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def _assert_lists(text: str, names: list[str], folder: Path) -> None:
    for name in names:
        entry = known_file(name)
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"{name} is not listed:\n{text}"
        assert f"({entry.size_text}" in line and entry.url in line and str(folder) in line, line
        if entry.size is None:  # no exact size to check a manual download by: the hash is given instead
            assert f"SHA-256 {entry.sha256}" in line, line


def test_no_network_is_detected_fast_and_every_missing_file_reported_once(tmp_path, offline, monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "hf_hub_download", lambda **kw: calls.append(kw))  # must never be reached
    models = tmp_path / "models" / "SEEDVR2"
    started = time.monotonic()
    with pytest.raises(ModelFileError) as failed:
        preflight(DEFAULT_DIT, DEFAULT_VAE, models, download=True)
    elapsed = time.monotonic() - started
    text = str(failed.value)
    assert elapsed <= 5, f"took {elapsed:.1f} s to notice there is no network"
    assert text.startswith("3 model file(s) could not be downloaded: no network: cannot connect to 127.0.0.1"), text
    _assert_lists(text, [DEFAULT_DIT, POS_EMB_FILE, DEFAULT_VAE], models)
    assert "partial" not in text and calls == []
    assert _files_under(tmp_path) == [], "an offline attempt left files or folders behind"


@pytest.mark.parametrize("dit, needs_pos_emb", [("seedvr2_ema_7b-Q4_K_M.gguf", True),
                                                ("seedvr2_7b_nvfp4.safetensors", False)])
def test_a_missing_published_quantized_dit_is_listed_with_what_it_needs(tmp_path, dit, needs_pos_emb):
    """AInVFX GGUF files need pos_emb.pt beside them; Comfy-Org files embed the embedding."""
    models = tmp_path / "models"
    with pytest.raises(ModelFileError) as failed:
        preflight(dit, DEFAULT_VAE, models, download=False)
    text = str(failed.value)
    names = [dit, POS_EMB_FILE, DEFAULT_VAE] if needs_pos_emb else [dit, DEFAULT_VAE]
    assert text.startswith(f"{len(names)} model file(s) not found in {models} and downloads are off"), text
    _assert_lists(text, names, models)
    assert (POS_EMB_FILE in text) == needs_pos_emb and "None" not in text
    assert _files_under(tmp_path) == []


def test_a_failed_download_leaves_no_debris_and_states_a_partial_file_only_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "check_network", lambda *args, **kwargs: None)  # the connection drops later
    entry = known_file(POS_EMB_FILE)
    models = tmp_path / "models"

    def dropped(with_data: bool):
        def fake(*, repo_id, filename, revision, local_dir, **kwargs):
            meta = Path(local_dir) / ".cache" / "huggingface" / "download"
            meta.mkdir(parents=True, exist_ok=True)
            (meta / f"{filename}.lock").write_bytes(b"")
            (meta / f"{filename}.metadata").write_text("etag")
            (meta / f"{filename}.abc123.incomplete").write_bytes(b"x" * 1000 if with_data else b"")
            raise ConnectionError("connection reset by peer")
        return fake

    monkeypatch.setattr(hub, "hf_hub_download", dropped(with_data=False))
    with pytest.raises(ModelFileError) as failed:
        download.download_model_file(entry, models)
    assert "partial" not in str(failed.value) and "connection reset by peer" in str(failed.value)
    assert _files_under(models) == [], _files_under(models)

    monkeypatch.setattr(hub, "hf_hub_download", dropped(with_data=True))
    with pytest.raises(ModelFileError) as failed:
        download.download_model_file(entry, models)
    kept = ".downloads/.cache/huggingface/download/pos_emb.pt.abc123.incomplete"
    assert f"The partial file is kept (1,000 of {entry.size:,} bytes, at {models / kept})" in str(failed.value)
    assert _files_under(models) == [".downloads", ".downloads/.cache", ".downloads/.cache/huggingface",
                                    ".downloads/.cache/huggingface/download", kept]


def test_each_hub_log_line_is_printed_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "check_network", lambda *args, **kwargs: None)
    hub_handlers = [h for h in logging.getLogger("huggingface_hub").handlers if isinstance(h, logging.StreamHandler)]
    assert hub_handlers, "huggingface_hub no longer adds a handler of its own: this test needs a new premise"
    for h in hub_handlers:  # it kept the stderr of import time (pytest's); a CLI's is the process's stderr
        monkeypatch.setattr(h, "stream", sys.stderr)

    def retrying(**kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise ConnectionError("gave up")

    monkeypatch.setattr(hub, "hf_hub_download", retrying)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # as the CLI (basicConfig) and ComfyUI have
    root.addHandler(handler)
    try:
        with pytest.raises(ModelFileError):
            download.download_model_file(known_file(POS_EMB_FILE), tmp_path / "models")
    finally:
        root.removeHandler(handler)
    assert capsys.readouterr().err.count("Retrying in 1s [Retry 1/5].") == 1
    assert any(isinstance(h, logging.StreamHandler) for h in logging.getLogger("huggingface_hub").handlers), \
        "the hub's own handler was not restored after the download"


def test_cli_reports_all_missing_files_before_loading_anything_large(tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"
    written = write_tiny_models(models)
    written.vae.unlink()
    written.pos_emb.unlink()
    import seedvr2.dit

    def never(*args, **kwargs):
        raise AssertionError("the DiT was loaded before the missing files were reported")

    monkeypatch.setattr(seedvr2.dit, "load_dit", never)
    img = tmp_path / "img.png"
    pytest.importorskip("PIL.Image").new("RGB", (8, 8)).save(img)
    code = main([str(img), "-o", str(tmp_path / "o.png"), "--models-dir", str(models), "--dit", written.dit.name,
                 "--vae", DEFAULT_VAE, "--no-download", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: 2 model file(s) not found in"), err
    _assert_lists(err, [POS_EMB_FILE, DEFAULT_VAE], models)


def test_the_readme_table_gives_each_files_registry_size_and_url():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in (DEFAULT_DIT, DEFAULT_VAE, POS_EMB_FILE):
        entry = known_file(name)
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README's model-file table has no row for {name}"
        assert f"{entry.size:,} bytes" in row and entry.url in row, row


def test_the_readme_lists_every_downloadable_dit_with_its_registry_size_and_source():
    """README's DiT table and the registry stay one list: exact bytes where known, else the rounded
    published size marked "hash only" (never a made-up exact count)."""
    import re  # noqa: PLC0415

    from seedvr2.models import MODEL_FILES  # noqa: PLC0415
    from seedvr2.models.registry import rounded_gb  # noqa: PLC0415

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {m.group(1): line for line in readme.splitlines() if (m := re.match(r"\| `([^`]+)` \| ", line))}
    dits = [m for m in MODEL_FILES if m.kind == "dit"]
    for entry in dits:
        row = rows.get(entry.name)
        assert row is not None, f"README lists no row for {entry.name}"
        assert f"`{entry.repo}`" in row, row
        if entry.size is not None:
            assert f"| {entry.size:,} |" in row, row
        else:
            assert f"| ≈{rounded_gb(entry.approx_size)} (hash only) |" in row, row
    listed = {name for name, row in rows.items() if row.count("|") == 5 and name.endswith((".safetensors", ".gguf", ".pth"))}
    assert listed - {m.name for m in MODEL_FILES} == set(), "README lists a DiT the registry does not know"
