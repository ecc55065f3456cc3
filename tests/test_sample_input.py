"""The sample clip for the video example workflow lands in ComfyUI's input folder without ever
replacing a user's file (nodes/sample_input.py, loaded here with a stand-in `folder_paths`)."""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types

import pytest

from conftest import REPO


@pytest.fixture
def sample_input(monkeypatch, tmp_path):
    fake = types.ModuleType("folder_paths")
    fake.get_input_directory = lambda: str(tmp_path / "input")
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    spec = importlib.util.spec_from_file_location("_sample_input_under_test", REPO / "nodes" / "sample_input.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_samples_are_placed_whole_and_nothing_else_is_left(sample_input, tmp_path):
    written = sample_input.provide()
    assert written == [tmp_path / "input" / name for name in sample_input.SAMPLES]
    for path in written:
        assert path.read_bytes() == (sample_input.ASSETS / path.name).read_bytes()
    assert sorted(os.listdir(tmp_path / "input")) == sorted(sample_input.SAMPLES), "a temporary file was left behind"
    assert sample_input.provide() == [], "a second start must not write again"


def test_a_users_file_of_that_name_is_never_replaced(sample_input, tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    clip, still = sample_input.SAMPLES
    (folder / clip).write_bytes(b"the user's own clip")
    (folder / "elsewhere").mkdir()
    os.symlink(folder / "elsewhere" / "missing.png", folder / still)  # a dangling link is the user's too
    assert sample_input.provide() == []
    assert (folder / clip).read_bytes() == b"the user's own clip"
    assert os.path.islink(folder / still)
    assert not (folder / "elsewhere" / "missing.png").exists(), "wrote through the user's link"


def test_a_failed_copy_is_logged_and_leaves_nothing(sample_input, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sample_input, "ASSETS", tmp_path / "no_such_folder")
    with caplog.at_level(logging.WARNING):
        assert sample_input.provide() == []
    assert "could not place the sample seedvr2_blockswap_sample.mp4" in caplog.text
    assert os.listdir(tmp_path / "input") == [], "a partial or temporary file was left behind"
