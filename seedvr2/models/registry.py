"""Known model files: where to download them and how to check them.

Data from shared/guides/checkpoints.md (§2 ByteDance originals, §4.1 numz/AInVFX registry, §5.2
Comfy-Org, §7 download pairs); the quantized files (GGUF, ComfyUI int8/mxfp8/nvfp4) come from
`seedvr2.quant.published`. The SHA-256 identifies the bytes (several files in the wild share names
and sizes with different content) and is the one check of a download. `size` is exact bytes where a
source states or checks it; where only a rounded size is published it is None (`approx_size` then
gives the rounded figure for messages, and nothing ever compares a file against it). A published
file without a stated SHA-256 is not listed. Files are stored flat in the models folder
(`models/SEEDVR2` in ComfyUI) under `name`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..quant.published import PUBLISHED_QUANTIZED

Kind = Literal["dit", "vae", "text"]

BYTEDANCE_3B = "ByteDance-Seed/SeedVR2-3B"
BYTEDANCE_7B = "ByteDance-Seed/SeedVR2-7B"
BYTEDANCE_3B_REV = "37255ff8cccfb01071b87f635a5948ca8d53117c"  # main since 2025-06-22 ("update ckpt")
BYTEDANCE_7B_REV = "eb0c4281d41ba3767d4f14370f0e37e9e9180c16"
NUMZ = "numz/SeedVR2_comfyUI"
AINVFX = "AInVFX/SeedVR2_comfyUI"
COMFY_ORG = "Comfy-Org/SeedVR2"


@dataclass(frozen=True)
class ModelFile:
    """One downloadable file: saved as `name`, fetched from `repo`/`path_in_repo` at `revision`."""

    name: str
    kind: Kind
    repo: str
    path_in_repo: str
    size: int | None  # exact bytes, or None when no source states them (the SHA-256 alone checks the file)
    sha256: str
    revision: str | None = None
    note: str = ""
    approx_size: int | None = None  # a rounded published size, for messages only (when `size` is None)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision or 'main'}/{self.path_in_repo}"

    @property
    def size_text(self) -> str:
        """The size for people: exact bytes when known, else the rounded published figure."""
        if self.size is not None:
            return f"{self.size:,} bytes, {readable_size(self.size)}"
        if self.approx_size is not None:
            return f"size not published exactly, about {rounded_gb(self.approx_size)}"
        return "size not published"


def readable_size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def rounded_gb(size: int) -> str:
    """A rounded size as sources publish it: "2 GB", "3.66 GB", "8.6 GB"."""
    return f"{size / 1e9:.2f}".rstrip("0").rstrip(".") + " GB"


def _plain(name: str, kind: Kind, repo: str, size: int, sha256: str, note: str = "", revision: str | None = None) -> ModelFile:
    return ModelFile(name, kind, repo, name, size, sha256, revision, note)


def _comfy(name: str, size: int, sha256: str, note: str) -> ModelFile:
    return ModelFile(name, "dit", COMFY_ORG, f"diffusion_models/{name}", size, sha256, None, note)


MODEL_FILES: tuple[ModelFile, ...] = (
    # numz / AInVFX safetensors: official keys, no embeddings (pos_emb.pt is fetched beside them).
    _plain("seedvr2_ema_3b_fp16.safetensors", "dit", NUMZ, 6_783_018_808,
           "2fd0e03a3dad24e07086750360727ca437de4ecd456f769856e960ae93e2b304", "3B fp16 (first 3B weights)"),
    _plain("seedvr2_ema_3b_fp8_e4m3fn.safetensors", "dit", NUMZ, 3_391_544_696,
           "3bf1e43ebedd570e7e7a0b1b60d6a02e105978f505c8128a241cde99a8240cff", "3B fp8 (first 3B weights)"),
    _plain("seedvr2_ema_7b_fp16.safetensors", "dit", NUMZ, 16_479_334_424,
           "7b8241aa957606ab6cfb66edabc96d43234f9819c5392b44d2492d9f0b0bbe4a", "7B fp16"),
    _plain("seedvr2_ema_7b_sharp_fp16.safetensors", "dit", NUMZ, 16_479_334_424,
           "20a93e01ff24beaeebc5de4e4e5be924359606c356c9c51509fba245bd2d77dd", "7B sharp fp16"),
    _plain("seedvr2_ema_7b_fp8_e4m3fn_mixed_block35_fp16.safetensors", "dit", AINVFX, 8_466_296_338,
           "3d68b5ec0b295ae28092e355c8cad870edd00b817b26587d0cb8f9dd2df19bb2", "7B fp8, last block fp16"),
    _plain("seedvr2_ema_7b_sharp_fp8_e4m3fn_mixed_block35_fp16.safetensors", "dit", AINVFX, 8_466_296_338,
           "0d2c5b8be0fda94351149c5115da26aef4f4932a7a2a928c6f184dda9186e0be", "7B sharp fp8, last block fp16"),
    # Comfy-Org single files: official keys + embedded positive/negative conditioning.
    _comfy("seedvr2_3b_fp16.safetensors", 6_784_268_336,
           "98669fd2c06df5eca88baf68cd5c478775c8e61fc110e598c52b350145ea2660", "3B fp16 (current 3B weights)"),
    _comfy("seedvr2_3b_fp8_e4m3fn.safetensors", 3_392_794_232,
           "a0226eaa2c3e6f47ae5ce83225120f16479da890ced1a3bc32b1a14619787914", "3B fp8 (current 3B weights)"),
    _comfy("seedvr2_7b_fp16.safetensors", 16_480_583_960,
           "2742ca6fee63bc5cc1773f426dd4b07b78cad27f51c9ea5cd42b035e6b592252", "7B fp16"),
    _comfy("seedvr2_7b_sharp_fp16.safetensors", 16_480_583_960,
           "70823bca54b9c24eeb56e1c452697c7c2a430867e58db0e376c6e260f3a4489d", "7B sharp fp16"),
    # Quantized single files: AInVFX GGUF (pos_emb.pt beside them) and Comfy-Org int8/mxfp8/nvfp4.
    *(ModelFile(p.name, "dit", p.repo, p.path_in_repo, p.size, p.sha256, None, p.note, p.approx_bytes)
      for p in PUBLISHED_QUANTIZED),
    # ByteDance fp32 masters (pickles; loaded with weights_only=True).
    _plain("seedvr2_ema_3b.pth", "dit", BYTEDANCE_3B, 13_566_090_228,
           "6bcc5ac59447e97b100477480aebb01be2ec724c8340bb83faae21f64848604b", "3B fp32 master",
           BYTEDANCE_3B_REV),
    _plain("seedvr2_ema_7b.pth", "dit", BYTEDANCE_7B, 32_958_774_606,
           "e1b2ae25505607e61f2a7dc7967ba778aaf3e3626d9969ce6e24c52d9ddebfcd", "7B fp32 master", BYTEDANCE_7B_REV),
    _plain("seedvr2_ema_7b_sharp.pth", "dit", BYTEDANCE_7B, 32_958_774_606,
           "ced5706c976d5879efcab9e108349d67abcbd8a9b36a1f48bf0f19c24164a264", "7B sharp fp32 master",
           BYTEDANCE_7B_REV),
    # VAE (shared by 3B and 7B).
    _plain("ema_vae_fp16.safetensors", "vae", NUMZ, 501_324_814,
           "20678548f420d98d26f11442d3528f8b8c94e57ee046ef93dbb7633da8612ca1", "VAE fp16"),
    _plain("ema_vae.pth", "vae", BYTEDANCE_3B, 1_002_691_902,
           "c7df8a67e68b7f9aca3d5d2153d2ce8ab4373687741a0f9ce87cb356ace51cac", "VAE fp32 master", BYTEDANCE_3B_REV),
    # Text embedding (the same for 3B and 7B; only the positive one is used).
    _plain("pos_emb.pt", "text", BYTEDANCE_3B, 595_100,
           "fa07a14844314772266b66c3b95deb0027696d8fe7065721263db5176f45d799", "positive text embedding",
           BYTEDANCE_3B_REV),
)

DEFAULT_DIT = "seedvr2_ema_3b_fp16.safetensors"
DEFAULT_VAE = "ema_vae_fp16.safetensors"
POS_EMB_FILE = "pos_emb.pt"

_BY_NAME = {m.name: m for m in MODEL_FILES}


def known_file(name: str) -> ModelFile | None:
    """The registry entry saved under `name` (a bare file name), if any."""
    return _BY_NAME.get(name)


def known_files(kind: Kind) -> list[ModelFile]:
    return [m for m in MODEL_FILES if m.kind == kind]
