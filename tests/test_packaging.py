"""The installable package (pyproject.toml): one list of runtime requirements, every import declared,
every package shipped, the console script wired.

`pip install .` ships `seedvr2` and `blockswap` (setuptools `packages.find`, which only finds folders
with an `__init__.py`); the ComfyUI node pack is the checkout itself. Runtime packages: `dependencies`
(what ComfyUI needs beyond torch, repeated in requirements.txt for ComfyUI's `pip install -r`) plus
the `cli` extra (the command line). .ci/run proves the same at run time in a venv holding nothing
else; these checks find a missing declaration without building anything.
"""
from __future__ import annotations

import ast
import fnmatch
import importlib
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SHIPPED = ("seedvr2", "blockswap")
# Distribution names of import names that differ.
DIST_OF = {"PIL": "pillow"}
# Optional: never required; each is checked somewhere inside `try: ... except ImportError` (a fallback, or
# a clear message) before it is used.
OPTIONAL = {
    "flash_attn": "the flash_attn attention backend, checked when asked for",
    "psutil": "RAM size on Windows (os.sysconf elsewhere)",
    "tqdm": "the command line's progress bar (a plain one otherwise)",
    "gguf": "reading and writing .gguf files (the `gguf` extra; refused with the install command otherwise)",
    "comfy_kitchen": "ComfyUI's kernels for mxfp8/nvfp4 when the host has them (torch otherwise)",
    "ray": "distributed runs (the `ray` extra; refused with the install command otherwise)",
}


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def third_party_imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, guarded by `except ImportError`) for each absolute non-stdlib import in `path`."""
    found: list[tuple[str, bool]] = []

    def catches_import_error(handler: ast.ExceptHandler) -> bool:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], guarded))
        if isinstance(node, ast.Try):
            body_guarded = guarded or any(catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, body_guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(path.read_text(), str(path)), False)
    return [(name, guarded) for name, guarded in found
            if name not in sys.stdlib_module_names and name not in SHIPPED and name != "__future__"]


def shipped_sources() -> list[Path]:
    return sorted(p for package in SHIPPED for p in (REPO / package).rglob("*.py"))


def test_every_import_of_the_shipped_packages_is_declared():
    declared = {dist_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["cli"]}
    problems, guarded_optional = [], set()
    for path in shipped_sources():
        for module, guarded in third_party_imports(path):
            if module == "torch":
                continue  # the host's (ComfyUI's, or the user's CUDA build): never a requirement
            if module in OPTIONAL:
                guarded_optional |= {module} if guarded else set()
            elif dist_name(DIST_OF.get(module, module)) not in declared:
                problems.append(f"{path.relative_to(REPO)}: imports {module}, which neither `dependencies` "
                                "nor the `cli` extra declares")
    problems += [f"optional {m} is never imported under `except ImportError`" for m in sorted(set(OPTIONAL) - guarded_optional)]
    assert not problems, "\n".join(problems)


def test_the_import_scan_sees_what_it_must():
    # the scan itself: the command line's media module imports numpy at the top, PyAV lazily
    modules = dict(third_party_imports(REPO / "seedvr2" / "video_io.py"))
    assert modules.get("numpy") is False and "av" in modules and "PIL" in modules


def test_requirements_txt_is_the_dependencies_list():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line] == PROJECT["dependencies"]
    assert not any(dist_name(r) == "torch" for r in PROJECT["dependencies"]), "torch is never a requirement"


def test_cli_extra_holds_its_parts():
    extras = PROJECT["optional-dependencies"]
    assert set(extras["video"]) | set(extras["download"]) == set(extras["cli"])
    assert not any(dist_name(r) == "torch" for group in extras.values() for r in group)


def test_packages_found_are_seedvr2_and_blockswap_complete():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    # what setuptools' find sees: folders with __init__.py under top-level ones (never .venv, build/, ...)
    tops = [d for d in REPO.iterdir() if (d / "__init__.py").is_file() and d.name.isidentifier()]
    packages = {".".join(p.parent.relative_to(REPO).parts) for top in tops for p in top.rglob("__init__.py")}
    assert {"nodes", "seedvr2", "blockswap"} <= packages
    found = {p for p in packages if any(fnmatch.fnmatchcase(p, pattern) for pattern in include)}
    assert {p.split(".")[0] for p in found} == set(SHIPPED)
    # a folder of modules without __init__.py would be left out of the wheel
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in shipped_sources()}
    assert folders <= found, f"not shipped (no __init__.py?): {sorted(folders - found)}"


def test_console_script_is_the_cli_main():
    target = PROJECT["scripts"]["seedvr2"]
    module, _, attr = target.partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
