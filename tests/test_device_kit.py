"""bench/device_kit.py: the kit a bare GPU machine needs for the ComfyUI-native check (no network here)."""
from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, SHARED

sys.path.insert(0, str(REPO / "bench"))
import device_kit  # noqa: E402

TARBALL = SHARED / "hosts" / "comfyui-0.33.0.tar.gz"


@pytest.mark.skipif(not TARBALL.is_file(), reason=f"{TARBALL} (ComfyUI 0.33.0's source) is not here")
def test_kit_packages_are_exactly_what_native_imports_and_the_device_lacks():
    """Every third-party module that ComfyUI's modules loaded by e2e_native import unconditionally is
    on the device or in the kit (else the device run dies on an ImportError), and every package the
    kit carries for ComfyUI is one of them (else it shadows nothing and only costs transfer size)."""
    imported = device_kit.native_imports(TARBALL)
    kit = {p.module for p in device_kit.PACKAGES}
    assert imported - device_kit.DEVICE_MODULES - kit == set()
    direct = {p.module for p in device_kit.PACKAGES if p.dependency_of is None}
    assert direct <= imported - device_kit.DEVICE_MODULES
    assert not kit & device_kit.DEVICE_MODULES  # a second copy would shadow the device's torch-matched one
    for p in device_kit.PACKAGES:
        assert p.dependency_of is None or p.dependency_of in kit, p


def test_stored_copy_keeps_every_member_byte_for_byte(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    members = {"demo/__init__.py": b"x = 1\n" * 500, "demo-1.0.dist-info/RECORD": b"demo/__init__.py,,\n"}
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    with zipfile.ZipFile(io.BytesIO(device_kit.stored_copy(wheel))) as z:
        assert [i.filename for i in z.infolist()] == list(members)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())  # xz sees the raw bytes
        assert {n: z.read(n) for n in z.namelist()} == members


def _tarball(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_tree_is_trimmed_and_refuses_links_and_foreign_paths(tmp_path):
    src = _tarball(tmp_path / "c.tar.gz", {"comfyui/nodes.py": b"n", "comfyui/comfy/sd.py": b"s",
                                          "comfyui/tests/test_x.py": b"t", "comfyui/blueprints/a.json": b"b"})
    assert device_kit.write_tree(src, tmp_path / "out.tar.xz") == (2, 2)
    with tarfile.open(tmp_path / "out.tar.xz") as tar:
        assert sorted(tar.getnames()) == ["comfyui/comfy/sd.py", "comfyui/nodes.py"]
    for bad in ({"comfyui/nodes.py": b"n", "comfyui/../../evil.py": b"e"}, {"elsewhere/x.py": b"x"}):
        with pytest.raises(SystemExit, match="unexpected member"):
            device_kit.write_tree(_tarball(tmp_path / "bad.tar.gz", bad), tmp_path / "bad.tar.xz")
    linked = _tarball(tmp_path / "l.tar.gz", {"comfyui/nodes.py": b"n"}, link="comfyui/comfy/evil.py")
    with pytest.raises(SystemExit, match="unexpected member"):
        device_kit.write_tree(linked, tmp_path / "l.tar.xz")
