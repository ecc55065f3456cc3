"""Build `.devkit/`: what a bare GPU machine needs to run `bench/gpu_check.py` with its ComfyUI-native check.

    python bench/device_kit.py                 # here, with PyPI (pip download); ~2-5 min, prints the sizes
    python bench/device_kit.py --py311-site DIR   # also install the same packages for this Python 3.11 into
                                                  # DIR (a local stand-in for the device, see README)

Then on the device machine (the `run` tool, `carry: [".devkit"]`): `bash bench/device_run.sh`.

The device (an H200 machine with no network) has Python 3.12 with torch 2.11, torchvision 0.26,
transformers 5.17, numpy, scipy, pillow, aiohttp, yarl, safetensors, einops, pytest and more, but
neither ComfyUI nor some of the packages its modules import at import time. The kit holds:

  comfyui-0.33.0.tar.xz  ComfyUI 0.33.0's source from ../shared/hosts/comfyui-0.33.0.tar.gz, less
                         its tests, blueprints, API nodes and CI files (`TRIM`) and its tokenizer
                         vocabularies (`TRIM_DATA`), which the native run never reads.
  wheels.tar.xz          the cp312 manylinux x86-64 (or pure-Python) wheels of `PACKAGES`: exactly
                         the packages that `bench/e2e_native.py`'s imports of ComfyUI need and the
                         device lacks, found by running it on the `small` case in a Python holding
                         only the device's packages (README, "GPU checks"). The wheels are re-zipped
                         uncompressed so that xz sees their raw bytes: PyAV's 35 MB wheel travels as
                         about 24 MB. Their RECORD hashes cover file contents, not the zip, so pip
                         installs them unchanged.
  baseline/              `seedvr2/` and `blockswap/` of `bench/e2e.py`'s BASELINE_REV (main before the
                         speed work; `git archive`), for gpu_check's e2e-baseline check: the device
                         gets the working tree without its git history.
  MANIFEST.json          package versions, wheel names and sha256 of the archives.

Invariants: one version per package (pip --no-deps installs them side by side); nothing in
PACKAGES is on the device already (a second copy would shadow the device's own, torch-matched one);
the kit plus the repo's travelling working tree stays under the device tool's 64 MiB, else this
script fails and says by how much.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".devkit"
CACHE = ROOT / ".devkit-cache"  # downloaded wheels; ignored and not carried
TARBALL = ROOT.parent / "shared" / "hosts" / "comfyui-0.33.0.tar.gz"
LIMIT = 64 << 20  # the device tool's limit on what travels (working tree + carried paths)
MiB = float(1 << 20)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    why: str
    pure: bool = False  # take the py3-none-any wheel (no compiled kernels)
    dependency_of: str | None = None  # imported by that package, not by ComfyUI itself

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")


# The import chain each one answers (ComfyUI 0.33.0 imports them at module level). Versions: those of
# .ci/setup_comfyui.sh's 0.33.0 host (ComfyUI's requirements.txt pins aimdo and kitchen; av>=16).
PACKAGES = (
    Package("comfy-aimdo", "0.4.13", "comfy.model_management -> comfy.memory_management"),
    Package("comfy-kitchen", "0.2.31", "comfy.ldm.modules.attention; only its fp8/int8 kernels are compiled, "
            "unused with bf16 weights and default (pytorch) attention", pure=True),
    Package("torchsde", "0.2.6", "nodes -> comfy.samplers -> k_diffusion.sampling"),
    Package("trampoline", "0.1.2", "torchsde", dependency_of="torchsde"),
    Package("av", "18.1.0", "comfy_extras.nodes_seedvr -> comfy_api.latest (video types)"),
    Package("kornia", "0.9.0", "comfy_extras.nodes_post_processing (native's colour correction)"),
    Package("kornia-rs", "0.2.0", "kornia (kornia.io, imported by `import kornia`)", dependency_of="kornia"),
)

# What `bench/e2e_native.py` imports from ComfyUI (`import_comfy`, `load_native`, `run_native`, `check_layout`).
NATIVE_ENTRY = ("comfy.cli_args", "comfy.model_management", "comfy.model_detection", "comfy.ops", "comfy.sd",
                "comfy.ldm.seedvr.model", "comfy.ldm.seedvr.vae", "nodes", "comfy_extras.nodes_post_processing",
                "comfy_extras.nodes_seedvr")

# Top-level modules the device's Python 3.12 already has (KINDS.md's package list, those ComfyUI touches).
DEVICE_MODULES = frozenset({
    "torch", "torchvision", "torchaudio", "numpy", "einops", "transformers", "tokenizers", "sentencepiece",
    "safetensors", "PIL", "scipy", "yaml", "psutil", "aiohttp", "yarl", "requests", "tqdm", "filelock",
    "packaging", "typing_extensions", "jinja2", "huggingface_hub", "regex", "sympy", "numba", "cv2", "safetensors",
    "triton", "tifffile", "imageio", "matplotlib", "pandas", "networkx", "fsspec", "attrs", "multidict", "mpmath",
    "einops", "skimage", "sklearn", "urllib3", "certifi", "idna", "pytest", "setuptools", "msgpack", "xxhash",
})

# Never imported by the in-process native run (tests, workflow blueprints, API nodes, CI and repo files).
TRIM = ("tests/", "tests-unit/", "blueprints/", "comfy_api_nodes/", ".github/", ".ci/", ".gitattributes", ".gitignore",
        "openapi.yaml")
# Folders whose data files (tokenizer vocabularies, read when a text encoder loads) the native run never
# reads: native SeedVR2 keeps its text conditioning inside the DiT checkpoint. Their modules stay.
TRIM_DATA = ("comfy/text_encoders/", "comfy/sd1_tokenizer/")

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def download(pkg: Package, dest: Path) -> Path:
    """The device's wheel of `pkg` (cp312 manylinux x86-64, or py3-none-any for pure ones), cached."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = pkg.module
    found = sorted(p for p in dest.glob(f"{stem}-{pkg.version}-*.whl") if is_device_wheel(p.name, pkg))
    if not found:
        platform = ["--platform", "any", "--implementation", "py"] if pkg.pure else \
            [a for p in PLATFORMS for a in ("--platform", p)] + ["--implementation", "cp"]
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", *platform,
            "-d", str(dest), f"{pkg.name}=={pkg.version}")
        found = sorted(p for p in dest.glob(f"{stem}-{pkg.version}-*.whl") if is_device_wheel(p.name, pkg))
    if len(found) != 1:
        raise SystemExit(f"{pkg.name}=={pkg.version}: expected one device wheel in {dest}, found {found}")
    return found[0]


def is_device_wheel(filename: str, pkg: Package) -> bool:
    tags = filename[:-4].split("-")[-3:]  # python, abi, platform
    if pkg.pure:
        return tags[2] == "any" and tags[0].startswith("py3")
    platform_ok = tags[2] == "any" or "x86_64" in tags[2]
    return platform_ok and (tags[0] in ("cp312", "py3") or tags[1] == "abi3")


def stored_copy(wheel: Path) -> bytes:
    """The wheel re-zipped without compression (same members, same bytes, same order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr, copy.create_system = info.external_attr, info.create_system
            dst.writestr(copy, src.read(info), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_wheels(wheels: list[Path], out: Path) -> None:
    """wheels/NAME.whl for each wheel, stored, in one tar.xz; cached in CACHE by the wheels' names and
    hashes (xz -9 of ~130 MB takes minutes)."""
    key = hashlib.sha256("".join(f"{w.name}:{sha256(w)}" for w in wheels).encode()).hexdigest()[:16]
    cached = CACHE / f"wheels-{key}.tar.xz"
    if not cached.is_file():
        print("writing wheels.tar.xz (xz -9 of the raw wheels: a few minutes) ...", flush=True)
        part = cached.with_suffix(".part")
        with tarfile.open(part, "w:xz", preset=9) as tar:
            for wheel in wheels:
                add_bytes(tar, f"wheels/{wheel.name}", stored_copy(wheel))
        part.rename(cached)
    shutil.copyfile(cached, out)


def write_tree(tarball: Path, out: Path) -> tuple[int, int]:
    """ComfyUI's source less TRIM, as comfyui/...; returns (files kept, files trimmed)."""
    kept = trimmed = 0
    with tarfile.open(tarball) as src, tarfile.open(out, "w:xz", preset=9) as dst:
        for member in src:
            parts = member.name.split("/", 1)
            if parts[0] != "comfyui" or member.issym() or member.islnk() or ".." in Path(member.name).parts:
                raise SystemExit(f"{tarball}: unexpected member {member.name!r} (want a plain comfyui/ tree)")
            rel = parts[1] if len(parts) > 1 else ""
            if any(rel == t.rstrip("/") or rel.startswith(t) for t in TRIM) or \
                    (member.isfile() and not rel.endswith(".py") and rel.startswith(TRIM_DATA)):
                trimmed += member.isfile()
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            kept += member.isfile()
    if not kept:
        raise SystemExit(f"{tarball}: no files")
    return kept, trimmed


def native_imports(tarball: Path) -> set[str]:
    """The third-party top-level modules that importing NATIVE_ENTRY from ComfyUI's source imports
    unconditionally: module-level imports, followed through the tree's own modules and their
    packages' __init__. Imports inside functions, `try` or `if` blocks are left out: ComfyUI guards
    its optional ones that way (`if TYPE_CHECKING`, `if args.directml`, `try: import xformers`), and
    the bench sets none of those options."""
    sources: dict[str, str] = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".py") and member.name.startswith("comfyui/"):
                rel = member.name[len("comfyui/"):-3].split("/")
                name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                sources[name] = tar.extractfile(member).read().decode("utf-8", "replace")
    is_package = {".".join(n.split(".")[:i]) for n in sources for i in range(1, n.count(".") + 1)}
    local_roots = {n.split(".")[0] for n in sources}  # `comfy` is a namespace package (no __init__)
    external: set[str] = set()
    seen: set[str] = set()
    todo = list(NATIVE_ENTRY)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in sources]
        for target in _module_level_imports(sources[name], name, name in is_package):
            pieces = target.split(".")
            local = [".".join(pieces[:i]) for i in range(len(pieces), 0, -1) if ".".join(pieces[:i]) in sources]
            if local:
                todo.append(local[0])
            elif pieces[0] not in sys.stdlib_module_names and pieces[0] not in local_roots:
                external.add(pieces[0])
    return external


def _module_level_imports(source: str, module: str, package: bool) -> list[str]:
    """Targets of the import statements at column 0 (module level, outside any block), parsed alone:
    parsing whole modules costs ~10 ms each."""
    import ast

    found: list[str] = []
    base = module.split(".") if package else module.split(".")[:-1]
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(("import ", "from ")):
            continue
        statement = line
        while (statement.count("(") > statement.count(")") or statement.endswith("\\")) and i + 1 < len(lines):
            i += 1
            statement += "\n" + lines[i]
        try:
            tree = ast.parse(statement)
        except SyntaxError:  # a docstring's line that reads like an import
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                root = ".".join(base[:len(base) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (root, node.module or "") if p)
                found.append(mod)
                found.extend(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def write_baseline(out: Path) -> str:
    """`git archive` of e2e.BASELINE_REV's seedvr2/ and blockswap/ into `out`; returns the revision."""
    sys.path.insert(0, str(ROOT / "bench"))
    from e2e import BASELINE_REV  # noqa: PLC0415  (imports torch: only when building)

    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", BASELINE_REV, "seedvr2", "blockswap"],
                             capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {BASELINE_REV}: {archive.stderr.decode(errors='replace').strip()} "
                         "(the kit's baseline needs this repo's git history)")
    out.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(out, filter="data")
    return BASELINE_REV


def travelling_tree_bytes() -> int:
    """What the device tool sends besides carried paths: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_py311(wheels: list[Path], site: Path) -> None:
    """This Python's wheels of the same PACKAGES into `site` (a local stand-in for the device's /tmp/site):
    the same versions, and for pure ones the very wheel the kit carries."""
    specs = [str(w) if p.pure else f"{p.name}=={p.version}" for p, w in zip(PACKAGES, wheels)]
    pip("install", "-q", "--no-deps", "--only-binary=:all:", "--upgrade", "--target", str(site), *specs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tarball", type=Path, default=TARBALL, help="ComfyUI 0.33.0's source (.tar.gz)")
    parser.add_argument("--kit", type=Path, default=KIT, help="output folder (default .devkit, git-ignored)")
    parser.add_argument("--py311-site", type=Path, help="also install this Python's wheels of the kit's packages here")
    args = parser.parse_args(argv)
    if not args.tarball.is_file():
        raise SystemExit(f"--tarball {args.tarball}: not found (ComfyUI 0.33.0's source; /work/shared/hosts/)")

    missing = native_imports(args.tarball) - DEVICE_MODULES - {p.module for p in PACKAGES}
    if missing:
        raise SystemExit(f"ComfyUI's modules that e2e_native loads import {sorted(missing)}, which neither the device "
                         "nor PACKAGES has: add them to PACKAGES")
    wheels = [download(p, CACHE) for p in PACKAGES]
    tmp = args.kit.with_name(args.kit.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print("writing comfyui-0.33.0.tar.xz ...", flush=True)
    kept, trimmed = write_tree(args.tarball, tmp / "comfyui-0.33.0.tar.xz")
    write_wheels(wheels, tmp / "wheels.tar.xz")
    baseline_rev = write_baseline(tmp / "baseline")
    manifest = {
        "comfyui": {"source": args.tarball.name, "files": kept, "trimmed_files": trimmed, "trim": list(TRIM),
                    "trim_data_files_under": list(TRIM_DATA), "sha256": sha256(tmp / "comfyui-0.33.0.tar.xz")},
        "packages": [{"name": p.name, "version": p.version, "wheel": w.name, "wheel_bytes": w.stat().st_size,
                      "why": p.why} for p, w in zip(PACKAGES, wheels)],
        "wheels_sha256": sha256(tmp / "wheels.tar.xz"),
        "baseline": {"revision": baseline_rev, "packages": ["seedvr2", "blockswap"]},
        "device_python": "3.12 (torch 2.11, torchvision 0.26, transformers 5.17 already there)",
    }
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(args.kit, ignore_errors=True)
    tmp.rename(args.kit)

    kit_bytes = sum(p.stat().st_size for p in args.kit.rglob("*") if p.is_file())
    tree_bytes = travelling_tree_bytes()
    for p in sorted(args.kit.iterdir()):
        print(f"  {p.name:<24}{p.stat().st_size / MiB:8.2f} MiB")
    for p, w in zip(PACKAGES, wheels):
        print(f"  {p.name}=={p.version:<12} {w.name}")
    print(f"kit {kit_bytes / MiB:.2f} MiB + working tree {tree_bytes / MiB:.2f} MiB = "
          f"{(kit_bytes + tree_bytes) / MiB:.2f} MiB of the device tool's {LIMIT / MiB:.0f} MiB")
    if args.py311_site is not None:
        install_py311(wheels, args.py311_site)
    if kit_bytes + tree_bytes > LIMIT:
        print(f"TOO LARGE by {(kit_bytes + tree_bytes - LIMIT) / MiB:.2f} MiB: the device tool refuses the call",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
