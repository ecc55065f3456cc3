"""The pack folder imports the way ComfyUI imports it (any folder name, as a package), and
outside ComfyUI it neither crashes nor registers nodes; the engine and model packages import
from the repo root without ComfyUI."""
from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import uuid

from conftest import REPO


def _load_pack_as(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_pack_imports_outside_comfyui_with_a_clear_message(caplog):
    name = f"custom_nodes_x_SeedVR2-BlockSwap_{uuid.uuid4().hex[:6]}"  # ComfyUI-style mangled path name
    with caplog.at_level(logging.WARNING):
        pack = _load_pack_as(name)
    assert not hasattr(pack, "comfy_entrypoint")
    assert "ComfyUI is not importable here" in caplog.text and "python -m seedvr2" in caplog.text


def test_inside_the_pack_seedvr2_uses_the_packs_own_blockswap():
    """ComfyUI does not put the pack folder on sys.path: seedvr2 must reach blockswap relatively."""
    name = f"custom_nodes_x_pack_{uuid.uuid4().hex[:6]}"
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location({name!r}, {str(REPO / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(REPO)!r}]); "
            "pack = importlib.util.module_from_spec(spec); sys.modules[spec.name] = pack; spec.loader.exec_module(pack); "
            f"loaders = importlib.import_module({name!r} + '.seedvr2.loaders'); "
            f"assert loaders.blockswap is sys.modules[{name!r} + '.blockswap'], loaders.blockswap; "
            "assert 'blockswap' not in sys.modules and 'seedvr2' not in sys.modules; print('ok')")
    # Run from a folder where the repo is not importable top-level, as inside ComfyUI.
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_engine_and_model_packages_import_without_comfyui():
    code = ("import sys, blockswap, seedvr2; "
            "assert not any(m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths') for m in sys.modules), 'ComfyUI leaked'; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
