"""README.md stays true: its set-up commands, its Python API snippet and its CI notes.

* The set-up block's first command clones the repository named in pyproject.toml, enters it, and
  installs torch plus this project with its `cli` extra, nothing else: the extra is the one list of
  runtime packages (tests/test_packaging.py checks it covers every import; .ci/run installs the same
  line in a venv without test requirements and runs the command line).
* The first ```python block of "Python API" runs as written, in a temp folder that holds a tiny
  `input.png` and the tiny random-weight models of tests/tiny_models.py saved under the file names the
  snippet uses (`SNIPPET_FILES` below: the only substitution). The device is the snippet's own choice.
* `.ci/run --help` prints usage and touches nothing; every environment variable it reads is in README.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO
from tiny_models import write_tiny_models

Image = pytest.importorskip("PIL.Image", reason="Pillow (`pip install pillow`) is needed for the snippet's image")
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

README = (REPO / "README.md").read_text()
CI_RUN = REPO / ".ci" / "run"
BASH = shutil.which("bash")
# What the README's install line must be (after `pip install`): torch, and this project with its cli extra.
INSTALL_ARGS = ["torch", "-e", ".[cli]"]
# Snippet path -> tiny model file standing in for it (models/SEEDVR2 is where the command line downloads).
SNIPPET_FILES = {
    "models/SEEDVR2/seedvr2_ema_3b_fp16.safetensors": "dit",
    "models/SEEDVR2/ema_vae_fp16.safetensors": "vae",
    "models/SEEDVR2/pos_emb.pt": "pos_emb",
}


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_block(text: str, lang: str) -> str:
    match = re.search(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)
    assert match, f"no ```{lang} block"
    return match.group(1)


def setup_commands() -> list[str]:
    lines = code_block(section("Set-up"), "bash").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------

def test_setup_is_two_commands_clone_install_run_then_ci():
    first, second = setup_commands()
    parts = [shlex.split(part) for part in first.split(" && ")]
    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert parts[0] == ["git", "clone", url]
    assert parts[1] == ["cd", url.rstrip("/").rsplit("/", 1)[1]]
    assert parts[2] == ["python3", "-m", "venv", ".venv"]
    assert parts[3] == [".venv/bin/pip", "install", *INSTALL_ARGS]
    assert parts[4][0] == ".venv/bin/seedvr2" and len(parts) == 5
    assert second == ".ci/run"


def test_ci_installs_the_readme_line_in_its_runtime_venv():
    pip_lines = [shlex.split(line) for line in CI_RUN.read_text().splitlines() if "pip\" install" in line]
    assert any(words[-len(INSTALL_ARGS):] == INSTALL_ARGS for words in pip_lines), pip_lines
    assert any(words[-1] == ".[cli]" and "-e" not in words for words in pip_lines), "no plain `pip install .[cli]`"


def test_main_job_options_exist():
    from seedvr2.cli import build_parser

    first = setup_commands()[0]
    job = shlex.split(first.split(" && ")[-1])[1:]
    args = build_parser().parse_args(job)  # argparse exits (SystemExit) on an unknown option
    assert args.input.name == "input.mp4" and args.output.name == "output.mp4"


# ------------------------------------------------------------------------------------------
# Python API snippet
# ------------------------------------------------------------------------------------------

def test_python_api_snippet_runs_as_written(tmp_path, monkeypatch):
    snippet = code_block(section("Python API (no ComfyUI needed)"), "python")
    for path in SNIPPET_FILES:
        assert f'"{path}"' in snippet, f"the snippet no longer loads {path}: update SNIPPET_FILES"
    tiny = write_tiny_models(tmp_path / "tiny")
    for path, kind in SNIPPET_FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(getattr(tiny, kind), tmp_path / path)
    y, x = np.mgrid[0:12, 0:16]
    Image.fromarray(np.stack([x * 16, y * 20, x * y], -1).astype(np.uint8)).save(tmp_path / "input.png")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(snippet, "README.md (Python API)", "exec"), namespace)

    assert namespace["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    with Image.open(tmp_path / "output.png") as out:
        assert out.size == (32, 24) and out.mode == "RGB"  # 2x, as the snippet says
        pixels = np.asarray(out)
    assert pixels.std() > 1  # an image, not a blank


# ------------------------------------------------------------------------------------------
# .ci/run
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_ci_run_help_prints_usage_and_touches_nothing(tmp_path, flag):
    work = tmp_path / "ci"
    (work / "venv").mkdir(parents=True)
    (work / "venv" / "keep").write_text("x")
    out = subprocess.run([BASH, str(CI_RUN), flag], capture_output=True, text=True, timeout=30,
                         env=_ci_env(tmp_path, work), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: .ci/run") and "CI_WORK_DIR" in out.stdout
    assert sorted(p.name for p in work.rglob("*")) == ["keep", "venv"]  # nothing deleted, nothing made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "ci"]


def _ci_env(tmp_path, work) -> dict[str, str]:
    """Environment for running .ci/run's argument handling: a PATH holding only what usage needs, so
    that a broken script stops at its first real command (rm, python3) instead of starting a CI run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return {**os.environ, "CI_WORK_DIR": str(work), "PATH": str(bin_dir)}


def test_ci_run_refuses_unknown_arguments(tmp_path):
    out = subprocess.run([BASH, str(CI_RUN), "--bogus"], capture_output=True, text=True, timeout=30,
                         env=_ci_env(tmp_path, tmp_path / "ci"))
    assert out.returncode == 2 and "unknown argument: --bogus" in out.stderr and "Usage:" in out.stderr
    assert not (tmp_path / "ci").exists()


def test_readme_documents_every_variable_ci_reads():
    script = CI_RUN.read_text() + (REPO / ".ci" / "setup_comfyui.sh").read_text()
    assigned = set(re.findall(r"^\s*(?:local\s+|declare\s+-\w+\s+)?([A-Za-z_]\w*)=", script, re.M))
    read = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", script)) - assigned - {"BASH_SOURCE"}
    assert read >= {"CI_WORK_DIR", "SEEDVR2_ACCEPTANCE_DIR", "TMPDIR"}
    missing = sorted(name for name in read if f"`{name}`" not in README)
    assert not missing, f"README.md does not document {missing}"
