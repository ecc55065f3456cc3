"""Session fixtures of the acceptance suite: a real ComfyUI with this pack in `custom_nodes/`, tiny
random-weight models in its model folder, started once per run and host.

Hosts: every acceptance test runs once per ComfyUI version in HOSTS (0.3.75 from PyPI, 0.33.0
from `../shared/hosts/`), through the session fixture `comfy_host`; its id shows in test names
(`[comfyui-0.33.0]`), except tests marked `newest_host_only` (the newest selected host alone).
`SEEDVR2_ACCEPTANCE_HOSTS=0.3.75` (comma-separated) narrows the list. A host
whose source is absent here (no `../shared`) skips its tests, naming the reason. pytest groups
the tests by host and stops one host's server before starting the next.

Off by default: a plain `python -m pytest` skips these tests with the reason. Enable them with
`python -m pytest -m acceptance` (any -m expression that names `acceptance` without `not`) or
`SEEDVR2_ACCEPTANCE=1`; the browser tests of the real frontend likewise with `-m frontend` or
`SEEDVR2_FRONTEND=1`. The set-up (`.ci/setup_comfyui.sh HOST`, cached under
`${SEEDVR2_ACCEPTANCE_DIR:-${TMPDIR:-/tmp}/seedvr2-acceptance}/HOST/`) runs from the first test
that needs the server.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import media
from .harness import ComfyServer
from .ui_to_api import convert
from .workflow import SMALL, is_video, served_examples

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / ".ci" / "setup_comfyui.sh"
PACK_FOLDER = "ComfyUI-SeedVR2-BlockSwap"  # what a user's `git clone` into custom_nodes/ gives
HOSTS = ("0.3.75", "0.33.0")  # the ComfyUI versions .ci/setup_comfyui.sh sets up
SOURCE_TARBALLS = {"0.33.0": "comfyui-0.33.0.tar.gz"}  # hosts whose source lies in ../shared/hosts
ACCEPTANCE_HELP = ("acceptance tests drive a real ComfyUI server (set-up ~3 min cold per host, ~5 s cached); "
                   "run them with `python -m pytest -m acceptance` or SEEDVR2_ACCEPTANCE=1")
FRONTEND_HELP = ("frontend tests open the example workflows in ComfyUI's own frontend in headless Chromium; "
                 "run them with `python -m pytest -m frontend` or SEEDVR2_FRONTEND=1")
OPT_IN = {"acceptance": ("SEEDVR2_ACCEPTANCE", ACCEPTANCE_HELP), "frontend": ("SEEDVR2_FRONTEND", FRONTEND_HELP)}


def marker_enabled(config: pytest.Config, marker: str) -> bool:
    """A slow suite runs when its environment switch is on or the -m expression names it (not negated)."""
    if os.environ.get(OPT_IN[marker][0], "").lower() in ("1", "true", "yes", "on"):
        return True
    markexpr = config.getoption("markexpr", "") or ""
    return bool(re.search(rf"(?<!not )\b{marker}\b", markexpr))


def acceptance_enabled(config: pytest.Config) -> bool:
    return marker_enabled(config, "acceptance")


def _only_newest_host(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `newest_host_only` (long ones about the pack itself, not the host) run on the
    newest selected host whose source is here: their other-host variants are deselected, not skipped."""
    hosts_dir = Path(os.environ.get("SEEDVR2_HOSTS_DIR") or REPO.parent / "shared" / "hosts")
    available = [h for h in selected_hosts() if h not in SOURCE_TARBALLS or (hosts_dir / SOURCE_TARBALLS[h]).is_file()]
    newest = (available or selected_hosts())[-1]
    keep, drop = [], []
    for item in items:
        host = getattr(getattr(item, "callspec", None), "params", {}).get("comfy_host")
        (drop if item.get_closest_marker("newest_host_only") and host not in (None, newest) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def selected_hosts() -> list[str]:
    wanted = [h.strip() for h in os.environ.get("SEEDVR2_ACCEPTANCE_HOSTS", "").split(",") if h.strip()]
    unknown = sorted(set(wanted) - set(HOSTS))
    if unknown:
        raise pytest.UsageError(f"SEEDVR2_ACCEPTANCE_HOSTS names unknown host(s) {unknown}; known: {list(HOSTS)}")
    return wanted or list(HOSTS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _only_newest_host(config, items)
    for marker, (_, help_text) in OPT_IN.items():
        if marker_enabled(config, marker):
            continue
        skip = pytest.mark.skip(reason=help_text)
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A failing acceptance test carries the server log's tail in its report."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("comfy") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append(("ComfyUI server log (tail)", server.log_tail(80)))


# ------------------------------------------------------------------------------------------------
# The report printed at the end of the run (nodes seen, timings, RSS), for CI logs and notes.

@dataclass
class AcceptanceReport:
    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)


_REPORT = AcceptanceReport()


@pytest.fixture(scope="session")
def acceptance_report() -> AcceptanceReport:
    return _REPORT


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _REPORT.lines:
        terminalreporter.section("SeedVR2 acceptance report")
        for line in _REPORT.lines:
            terminalreporter.write_line(line)


# ------------------------------------------------------------------------------------------------
# ComfyUI set-up and server.

SETUP_UNAVAILABLE = 77  # .ci/setup_comfyui.sh: this host's source is not on this machine


@pytest.fixture(scope="session", params=selected_hosts(), ids=lambda host: f"comfyui-{host}")
def comfy_host(request: pytest.FixtureRequest) -> str:
    """The ComfyUI version under test; every fixture below (and so every test) runs once per host."""
    return request.param


@dataclass(frozen=True)
class ComfyInstall:
    tree: Path  # pristine ComfyUI tree (never modified by tests)
    python: Path  # its venv's python
    version: str = "0.3.75"  # ComfyUI's own version (comfyui_version.py)


@pytest.fixture(scope="session")
def comfy_install(comfy_host: str, acceptance_report: AcceptanceReport) -> ComfyInstall:
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SETUP_SCRIPT), comfy_host], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode == SETUP_UNAVAILABLE:
        pytest.skip(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"ComfyUI {comfy_host} unavailable")
    if proc.returncode != 0:
        pytest.fail(f"{SETUP_SCRIPT.name} {comfy_host} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}", pytrace=False)
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith("SEEDVR2_COMFYUI_"))
    install = ComfyInstall(Path(values["SEEDVR2_COMFYUI_DIR"]), Path(values["SEEDVR2_COMFYUI_PYTHON"]),
                           values["SEEDVR2_COMFYUI_VERSION"])
    assert install.version == comfy_host, f"{SETUP_SCRIPT.name} {comfy_host} set up ComfyUI {install.version}"
    prefix = f"setup_comfyui[{comfy_host}]: "
    did = [line.removeprefix(prefix) for line in proc.stdout.splitlines()
           if line.startswith(prefix) and any(w in line for w in ("up to date", "built", "laid out", "ready"))]
    acceptance_report.add(f"[{comfy_host}] set-up: {time.monotonic() - t0:.0f}s ({'; '.join(did)})")
    return install


@dataclass(frozen=True)
class ModelFiles:
    folder: Path  # models/SEEDVR2 of the ComfyUI copy
    dit: str  # file names as the loaders' combos list them
    vae: str
    embedding: str  # text embedding beside the DiT (not a model choice)
    extra_folder: Path  # a second folder registered via extra_model_paths.yaml
    extra_dit: str


def _write_models(folder: Path) -> tuple[str, str, str]:
    """Tiny random-weight DiT and VAE checkpoints plus the text embedding beside the DiT, as a
    user has them in models/SEEDVR2. Returns the (dit, vae, embedding) file names."""
    from tests import tiny_models  # noqa: PLC0415  (imports torch and the seedvr2 package)

    written = tiny_models.write_tiny_models(folder)
    return written.dit.name, written.vae.name, written.pos_emb.name


def comfy_tree(comfy_install: ComfyInstall, parent: Path) -> Path:
    """A fresh copy of the ComfyUI tree in `parent`/ComfyUI, with the pack linked into custom_nodes/."""
    root = parent / "ComfyUI"
    shutil.copytree(comfy_install.tree, root, symlinks=True)
    (root / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    return root


def link_models(model_files: ModelFiles, root: Path) -> Path:
    """The suite's DiT, VAE and text embedding hard-linked into `root`'s models/SEEDVR2 (a server
    of its own sees the same files); returns that folder."""
    folder = root / "models" / "SEEDVR2"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (model_files.dit, model_files.vae, model_files.embedding):
        os.link(model_files.folder / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def comfy_root(comfy_install: ComfyInstall, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the ComfyUI tree for this run, with the pack linked into custom_nodes/."""
    return comfy_tree(comfy_install, tmp_path_factory.mktemp(f"comfyui-{comfy_install.version}"))


@pytest.fixture(scope="session")
def model_files(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    folder = comfy_root / "models" / "SEEDVR2"
    folder.mkdir(parents=True, exist_ok=True)
    dit, vae, emb = _write_models(folder)
    # Not a model: the loaders' combos must not list it.
    (folder / "README.txt").write_text("tiny random-weight checkpoints for the acceptance suite\n")
    # A second model folder, as users register one in extra_model_paths.yaml (before the pack imports).
    extra = tmp_path_factory.mktemp("extra_models")
    (extra / "SEEDVR2").mkdir()
    extra_dit = "extra_" + dit
    os.link(folder / dit, extra / "SEEDVR2" / extra_dit)
    os.link(folder / emb, extra / "SEEDVR2" / emb)
    return ModelFiles(folder, dit, vae, emb, extra / "SEEDVR2", extra_dit)


@pytest.fixture(scope="session")
def comfy(comfy_install: ComfyInstall, comfy_root: Path, model_files: ModelFiles,
          acceptance_report: AcceptanceReport) -> ComfyServer:
    """The running server (started once per session, stopped at the end)."""
    yaml_path = comfy_root.parent / "extra_model_paths.yaml"
    yaml_path.write_text(json.dumps({"acceptance_extra": {
        "base_path": str(model_files.extra_folder.parent), "seedvr2": "SEEDVR2"}}, indent=1))  # JSON is YAML
    server = ComfyServer(comfy_install.python, comfy_root, comfy_root.parent / "comfyui.log",
                         extra_args=["--extra-model-paths-config", str(yaml_path)])
    seconds = server.start()
    acceptance_report.add(f"[{comfy_install.version}] server: ComfyUI "
                          f"{server.get_json('/system_stats')['system']['comfyui_version']} "
                          f"up in {seconds:.1f}s, RSS {server.rss_mb():.0f} MiB, log {server.log_path}")
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------------
# The example workflows and the small inputs the runs use.

@pytest.fixture(scope="session")
def examples(comfy: ComfyServer) -> dict[str, tuple[dict, dict]]:
    """name -> (UI workflow, API prompt) of every example workflow, as the templates menu serves it."""
    info = comfy.object_info()
    return {name: (ui, convert(ui, info)) for name, ui in served_examples(comfy, PACK_FOLDER).items()}


@pytest.fixture(scope="session")
def video_example(examples) -> tuple[str, dict, dict]:
    """(name, UI workflow, API prompt) of the example workflow that upscales a video."""
    found = [(name, ui, prompt) for name, (ui, prompt) in examples.items() if is_video(prompt)]
    assert found, f"no example workflow loads a video (LoadVideo): {sorted(examples)}"
    return found[0]


@pytest.fixture(scope="session")
def small_inputs(comfy: ComfyServer, comfy_install: ComfyInstall, tmp_path_factory) -> dict[str, tuple[str, int]]:
    """The small clip and still, uploaded to the server: {"video"|"image": (input name, frames)}."""
    folder = tmp_path_factory.mktemp("inputs")
    out = {}
    for kind, frames, suffix in (("video", SMALL["frames"], ".mp4"), ("image", 1, ".png")):
        path = media.make_input(comfy_install.python, folder / f"small{suffix}", frames=frames,
                                width=SMALL["width"], height=SMALL["height"], fps=SMALL["fps"])
        out[kind] = (comfy.upload_image(path), frames)
    return out
