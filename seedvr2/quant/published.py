"""Published quantized SeedVR2 DiT files, for the model registry to import (data only).

Source: shared/guides/checkpoints.md §4.1 (numz registry at ``4490bd1``: AInVFX GGUF names and
SHA-256) and §5.2 (Comfy-Org/SeedVR2 current README; SHA-256 from the converter's output list).
``size`` is exact bytes where a source states or checks it, else None with ``approx_bytes`` (the
registry should verify those files by SHA-256 only). ``confirmed``: the SHA-256 was confirmed by an
independent downstream pin; the other Comfy-Org hashes are the converter's expected outputs.
Files with no stated SHA-256 (cmeka's other quants, the 1.4B distilled file) are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PublishedFile", "PUBLISHED_QUANTIZED"]


@dataclass(frozen=True)
class PublishedFile:
    name: str                 # file name as saved in the models folder
    repo: str                 # Hugging Face repository
    path_in_repo: str
    sha256: str
    size: int | None          # exact bytes, or None when only approximate
    approx_bytes: int | None  # rough size for messages when ``size`` is None
    note: str
    confirmed: bool = False


_AINVFX = "AInVFX/SeedVR2_comfyUI"
_COMFY = "Comfy-Org/SeedVR2"


def _gguf(name: str, sha: str, approx: int, note: str) -> PublishedFile:
    return PublishedFile(name, _AINVFX, name, sha, None, approx, note)


def _comfy(name: str, sha: str, size: int | None, approx: int | None, note: str, confirmed: bool = False) -> PublishedFile:
    return PublishedFile(name, _COMFY, f"diffusion_models/{name}", sha, size, approx, note, confirmed)


PUBLISHED_QUANTIZED: tuple[PublishedFile, ...] = (
    # AInVFX GGUF (cmeka): block matrices quantized, the rest F16; first 3B weights.
    _gguf("seedvr2_ema_3b-Q4_K_M.gguf", "e665e3909de1a8c88a69c609bca9d43ff5a134647face2ce4497640cc3597f0e",
          2_000_000_000, "3B GGUF Q4_K_M"),
    _gguf("seedvr2_ema_3b-Q8_0.gguf", "be0d60083a2051a265eb4b77f28edf494e6db67ffc250216f32b72292e5cbd96",
          3_660_000_000, "3B GGUF Q8_0"),
    _gguf("seedvr2_ema_7b-Q4_K_M.gguf", "db9cb2ad90ebd40d2e8c29da2b3fc6fd03ba87cd58cbadceccca13ad27162789",
          4_760_000_000, "7B GGUF Q4_K_M"),
    _gguf("seedvr2_ema_7b_sharp-Q4_K_M.gguf", "7aed800ac4eb8e0d18569a954c0ff35f5a1caa3ed5d920e66cc31405f75b6e69",
          4_760_000_000, "7B sharp GGUF Q4_K_M"),
    # Comfy-Org quantized single files (embedded conditioning; current 3B weights).
    _comfy("seedvr2_3b_int8_convrot.safetensors", "c3dec8bcc5916843a8a858572970597462e1f2dc598d6dfd818f6cd40f53a157",
           3_458_259_704, None, "3B int8 ConvRot", confirmed=True),
    _comfy("seedvr2_3b_mxfp8.safetensors", "768623e3bfb1752b4d0668782751b5fead58b1bcb153f0b5e03a423095630297",
           None, 3_550_000_000, "3B mxfp8"),
    _comfy("seedvr2_3b_nvfp4.safetensors", "c8dea38b04d43295621726e2cd371c0d2d001006169c113aea17950f2cb2e295",
           None, 2_000_000_000, "3B nvfp4"),
    _comfy("seedvr2_7b_int8_convrot.safetensors", "5aa0d25fc9d35e449b659d0c9a5dcb22e2a4fa04032101b95a39da42b32c1be6",
           8_334_897_976, None, "7B int8 ConvRot"),
    _comfy("seedvr2_7b_mxfp8.safetensors", "b40804f47910d96c5089c728cc7ec8b57b956750eabb6397dc4e6e697477263d",
           None, 8_600_000_000, "7B mxfp8"),
    _comfy("seedvr2_7b_nvfp4.safetensors", "cc4af1a7bd5377066496f393555478323e806fa21163bdbe3409451aface9b93",
           None, 4_760_000_000, "7B nvfp4"),
    _comfy("seedvr2_7b_sharp_int8_convrot.safetensors", "db48be2f1cc7e36b01a2aa529810f5d9c6a971edd29be225cf1b0eb18d51c366",
           8_334_897_976, None, "7B sharp int8 ConvRot"),
    _comfy("seedvr2_7b_sharp_mxfp8.safetensors", "0d621ec1561a11ca9b5f432ec6d4e09b263b61f4b83b0280552c8b4add030ec3",
           None, 8_600_000_000, "7B sharp mxfp8"),
    _comfy("seedvr2_7b_sharp_nvfp4.safetensors", "80d57af7722f5a5bd4c01d2ab2688f2bf05e552e59d3d3287257de709db10397",
           None, 4_760_000_000, "7B sharp nvfp4"),
)
