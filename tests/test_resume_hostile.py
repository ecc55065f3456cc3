"""`--resume DIR` against hostile or unlucky folders and inputs (review of issue 15).

* An input edited in the middle keeps its size, head and tail: the resume key must still change
  (else a resume would mix batches of the old video into the new one).
* A crafted manifest (nested too deeply, huge, control characters in its names) is a clear
  `ResumeError`, never a RecursionError or a terminal escape.
* Two runs creating the same folder at once: the second never overwrites the first's manifest;
  it checks it (and is refused if its run differs).
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

import seedvr2.pipeline.store as store_module
from seedvr2.pipeline.store import FORMAT, MANIFEST, MANIFEST_MAX_BYTES, ResumeError, ResumeStore
from seedvr2.video_io import VideoSource


def test_an_input_edited_in_the_middle_changes_the_resume_key(tmp_path):
    size = 40 << 20  # beyond the 2 x 16 MiB that a head-and-tail hash reads
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    data = bytearray(os.urandom(1 << 20)) * 40
    a.write_bytes(data)
    data[size // 2] ^= 0xFF  # one byte edited in the middle: same size, same head and tail
    b.write_bytes(data)
    shape = (10, 8, 8, 3)
    key_a = VideoSource.identity(SimpleNamespace(path=a, shape=shape))
    key_b = VideoSource.identity(SimpleNamespace(path=b, shape=shape))
    assert key_a != key_b
    assert key_a == VideoSource.identity(SimpleNamespace(path=a, shape=shape))  # and it is stable


def _bind(folder, key=None):
    return ResumeStore(folder, key or {"run": 1}).bind({"more": 2})


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  json.dumps({"format": FORMAT, "key": {"run": 1, "pad": "x" * MANIFEST_MAX_BYTES}})],
                         ids=["nested", "huge"])
def test_a_crafted_manifest_is_a_clear_error(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ResumeError, match="manifest.json is (unreadable or )?corrupt"):
        _bind(tmp_path)


def test_names_from_the_manifest_reach_the_message_escaped(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT, "key": {"\x1b[2J": 1}}))
    with pytest.raises(ResumeError) as info:
        _bind(tmp_path)
    assert "\x1b" not in str(info.value) and "\\u001b[2J" in str(info.value)


def test_a_second_run_starting_at_once_checks_the_first_manifest_not_overwrites_it(tmp_path, monkeypatch):
    """The rival run writes its manifest between our check and our write."""
    real_mkstemp, raced = store_module.tempfile.mkstemp, []

    def racing_mkstemp(*args, **kwargs):
        if not raced:
            raced.append(1)
            _bind(tmp_path, {"run": "rival"})
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(store_module.tempfile, "mkstemp", racing_mkstemp)
    with pytest.raises(ResumeError, match="different run.*run: stored \"rival\", now 1"):
        _bind(tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["key"]["run"] == "rival"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]  # no temporary file left


def test_a_second_run_of_the_same_key_starting_at_once_shares_the_folder(tmp_path, monkeypatch):
    real_mkstemp, raced = store_module.tempfile.mkstemp, []

    def racing_mkstemp(*args, **kwargs):
        if not raced:
            raced.append(1)
            _bind(tmp_path)
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(store_module.tempfile, "mkstemp", racing_mkstemp)
    assert _bind(tmp_path).bound
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_a_temporary_file_left_by_a_killed_run_does_not_make_the_folder_foreign(tmp_path):
    (tmp_path / ".partial-abc123.tmp").write_bytes(b"cut short")
    assert _bind(tmp_path).bound


def test_a_batch_file_of_another_shape_is_rejected_from_its_header_without_reading_it(tmp_path, monkeypatch):
    """A file named like a batch but holding a huge tensor is never read into memory."""
    import safetensors
    from safetensors.torch import save_file

    real_open, read = safetensors.safe_open, []

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, name):
            read.append(name)
            return self.f.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self.f, name)

    store = _bind(tmp_path)
    save_file({"x0": torch.zeros(64, 64, 64)}, str(store.batch_path(0)))  # 1 MiB where 16 values belong
    monkeypatch.setattr(safetensors, "safe_open", Spy)
    assert store.load(0, (1, 2, 2, 4)) is None
    assert read == []


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_save_cut_short_leaves_no_file_and_the_store_usable(tmp_path, monkeypatch, failure):
    store = _bind(tmp_path)
    x0 = torch.rand(1, 2, 2, 4)

    def failing_fsync(fd):
        raise failure

    monkeypatch.setattr(store_module.os, "fsync", failing_fsync)
    with pytest.raises(type(failure)):
        store.save(0, x0, (0, 1))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]
    assert store.load(0, (1, 2, 2, 4)) is None and store.stored(1) == []
    store.save(0, x0, (0, 1))
    assert torch.equal(_bind(tmp_path).load(0, (1, 2, 2, 4)), x0)


def test_an_output_inside_the_resume_folder_is_refused_before_any_work(tmp_path, capsys):
    """The output's temporary file would make the (empty) folder look foreign, and the folder
    holds only batches: said at once, naming both options."""
    from seedvr2.cli import main

    folder = tmp_path / "R"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"not read: the check comes first")
    for output in (folder / "out.mp4", tmp_path / "link" / "out.mp4"):
        code = main([str(source), "-o", str(output), "--resume", str(folder), "--models-dir", str(tmp_path / "none"),
                     "--no-download", "--device", "cpu", "-q"])
        err = capsys.readouterr().err
        assert code == 2 and f"-o {output} is inside --resume {folder}" in err, err
    assert list(folder.iterdir()) == []
