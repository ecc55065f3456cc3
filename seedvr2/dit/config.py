"""One dataclass describing a SeedVR2 DiT, the 3B/7B presets, and the parser of official configs.

The two released models differ in a handful of named ways (official code: ``models/dit_v2`` = 3B,
``models/dit`` = 7B; shared/guides/model-spec.md sections 3 and 6):

| field                 | 3B (dit_v2)          | 7B (dit)                    |
|-----------------------|----------------------|-----------------------------|
| ``mlp``               | ``"swiglu"`` no bias | ``"gelu"`` (tanh) with bias |
| ``mm_layers``         | 10 of 32             | all 36                      |
| ``rope``              | ``"mmrope3d"``       | ``"pixel3d"`` (video only)  |
| ``out_norm``          | True                 | False                       |
| ``last_block_vid_only`` | True               | False                       |
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DiTConfig", "PRESETS", "WINDOW_METHODS"]

# Official window method names -> shifted? (models/dit*/window.py, model-spec.md section 5).
WINDOW_METHODS = {"720pwin_by_size_bysize": False, "720pswin_by_size_bysize": True}

# Official `__object__.path` of each NaDiT implementation -> our family defaults.
_OFFICIAL_PATHS = {"models.dit_v2.nadit": "dit_v2", "models.dit.nadit": "dit"}


@dataclass(frozen=True)
class DiTConfig:
    """Everything that shapes a SeedVR2 NaDiT. Build with ``PRESETS[...]`` or ``from_official``."""

    dim: int                          # vid_dim == txt_dim
    txt_in_dim: int                   # text embedding width (5120 for the released embeddings)
    heads: int
    head_dim: int
    num_layers: int
    mm_layers: int                    # blocks [0, mm_layers) hold separate .vid/.txt weights; later ones share .all
    mlp: Literal["swiglu", "gelu"]
    mlp_hidden: int
    rope: Literal["mmrope3d", "pixel3d"]
    rope_dim: int                     # official rope_dim (3B); head_dim // 2 for the 7B pixel rope
    out_norm: bool                    # RMSNorm + ada (attn emb slice) before vid_out (3B)
    last_block_vid_only: bool         # last block: text unmodulated, no text MLP (3B)
    window_shifted: tuple[bool, ...]  # per block: regular or shifted windows
    num_windows: tuple[int, int, int] = (4, 3, 3)
    vid_in_channels: int = 33         # 16 noise + 16 condition latent + 1 mask
    vid_out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    norm_eps: float = 1e-5
    emb_dim: int = field(default=0)   # 6 * dim (shift, scale, gate for attn and mlp); 0 = derive

    def __post_init__(self) -> None:
        if self.emb_dim == 0:
            object.__setattr__(self, "emb_dim", 6 * self.dim)
        problems = []
        if self.emb_dim != 6 * self.dim:
            problems.append(f"emb_dim must be 6 * dim = {6 * self.dim} (ada 'single'), got {self.emb_dim}")
        if not 0 <= self.mm_layers <= self.num_layers:
            problems.append(f"mm_layers must be in [0, num_layers={self.num_layers}], got {self.mm_layers}")
        if self.last_block_vid_only and self.mm_layers >= self.num_layers:
            problems.append("last_block_vid_only needs a shared-weight last block (mm_layers < num_layers)")
        if len(self.window_shifted) != self.num_layers:
            problems.append(f"window_shifted has {len(self.window_shifted)} entries for {self.num_layers} blocks")
        if self.mlp not in ("swiglu", "gelu"):
            problems.append(f"mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if self.rope not in ("mmrope3d", "pixel3d"):
            problems.append(f"rope must be 'mmrope3d' or 'pixel3d', got {self.rope!r}")
        elif 2 * self.rope_freqs * 3 > self.head_dim or self.rope_freqs < 1:
            problems.append(f"rope_dim {self.rope_dim} rotates {6 * self.rope_freqs} dims, which does not fit "
                            f"head_dim {self.head_dim}")
        if tuple(self.patch_size) != (1, 2, 2):
            problems.append(f"only patch_size (1, 2, 2) is supported (every SeedVR2 model), got {self.patch_size}")
        if problems:
            raise ValueError("invalid SeedVR2 DiT config: " + "; ".join(problems))

    @property
    def rope_axis_dim(self) -> int:
        """The ``dim`` of the official per-axis RotaryEmbedding (3B: 128//3 = 42, 7B: 64//3 = 21)."""
        return self.rope_dim // 3

    @property
    def rope_freqs(self) -> int:
        """Length of the stored ``rope.rope.freqs`` buffer: frequencies per axis."""
        return self.rope_axis_dim // 2

    @property
    def patch_dim_in(self) -> int:
        return self.vid_in_channels * math.prod(self.patch_size)

    @property
    def patch_dim_out(self) -> int:
        return self.vid_out_channels * math.prod(self.patch_size)

    def block_has_mm_weights(self, idx: int) -> bool:
        return idx < self.mm_layers

    def block_is_vid_only(self, idx: int) -> bool:
        return self.last_block_vid_only and idx == self.num_layers - 1

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, config: Mapping[str, Any]) -> DiTConfig:
        """Parse the official ``dit.model`` mapping (the dict stored as JSON in the fixtures).

        Settings the released models never change are checked, not silently ignored: a value this
        port does not implement raises ``ValueError`` naming the key.
        """
        family = _family(config)
        get = _Getter(config)
        dim = get.integer("vid_dim")
        if get.integer("txt_dim", dim) != dim:
            raise ValueError(f"official DiT config: txt_dim {config['txt_dim']} != vid_dim {dim} is not supported")
        head_dim = get.integer("head_dim")
        num_layers = get.integer("num_layers")
        for key, allowed in (("norm", {"fusedrms"}), ("qk_norm", {"fusedrms"}), ("ada", {"single"}),
                             ("qk_bias", {False})):
            get.choice(key, allowed)
        # The 3B (dit_v2) ships SwiGLU, the 7B (dit) the GELU "normal" MLP; no file mixes them.
        get.choice("mlp_type", {"swiglu"} if family == "dit_v2" else {"normal"})
        if family == "dit":
            get.choice("qk_rope", {True}, default=True)
            get.choice("shared_mlp", {False}, default=False)
            get.choice("shared_qkv", {False}, default=False)
        else:
            get.choice("rope_type", {"mmrope3d"})
            get.choice("vid_out_norm", {"fusedrms"})
        block_types = config.get("block_type", ["mmdit_sr"] * num_layers)
        if list(block_types) != ["mmdit_sr"] * num_layers:
            raise ValueError(f"official DiT config: block_type must be {num_layers} x 'mmdit_sr', got {block_types}")
        windows = [tuple(w) for w in config.get("window", [(4, 3, 3)] * num_layers)]
        if len(set(windows)) != 1 or len(windows) != num_layers:
            raise ValueError(f"official DiT config: expected one window size for all {num_layers} blocks, got {windows}")
        methods = list(config.get("window_method", []))
        unknown = [m for m in methods if m not in WINDOW_METHODS]
        if unknown or len(methods) != num_layers:
            raise ValueError(f"official DiT config: window_method must list {num_layers} of {sorted(WINDOW_METHODS)}, "
                             f"got {methods}")
        mlp = "swiglu" if config["mlp_type"] == "swiglu" else "gelu"
        expand_ratio = get.integer("expand_ratio")
        return cls(
            dim=dim,
            txt_in_dim=get.integer("txt_in_dim"),
            heads=get.integer("heads"),
            head_dim=head_dim,
            num_layers=num_layers,
            mm_layers=get.integer("mm_layers") if family == "dit_v2" else num_layers,
            mlp=mlp,
            mlp_hidden=_mlp_hidden(mlp, dim, expand_ratio),
            rope="mmrope3d" if family == "dit_v2" else "pixel3d",
            rope_dim=get.integer("rope_dim") if family == "dit_v2" else head_dim // 2,
            out_norm=family == "dit_v2",
            last_block_vid_only=family == "dit_v2",
            window_shifted=tuple(WINDOW_METHODS[m] for m in methods),
            num_windows=windows[0],  # type: ignore[arg-type]
            vid_in_channels=get.integer("vid_in_channels"),
            vid_out_channels=get.integer("vid_out_channels"),
            patch_size=tuple(get.sequence("patch_size")),  # type: ignore[arg-type]
            norm_eps=float(config.get("norm_eps", 1e-5)),
            emb_dim=get.integer("emb_dim"),
        )


def _family(config: Mapping[str, Any]) -> str:
    path = (config.get("__object__") or {}).get("path")
    if path is not None:
        if path not in _OFFICIAL_PATHS:
            raise ValueError(f"official DiT config: __object__.path {path!r} is not a SeedVR2 NaDiT "
                             f"(expected one of {sorted(_OFFICIAL_PATHS)})")
        return _OFFICIAL_PATHS[path]
    # Without the class path, the 3B-only keys tell the families apart.
    return "dit_v2" if "rope_type" in config or "mm_layers" in config else "dit"


def _mlp_hidden(mlp: str, dim: int, expand_ratio: int) -> int:
    if mlp == "gelu":
        return dim * expand_ratio
    # Official SwiGLU (models/dit_v2/mlp.py): 2/3 of the ratio, rounded up to a multiple of 256.
    hidden = int(2 * dim * expand_ratio / 3)
    return 256 * ((hidden + 255) // 256)


class _Getter:
    """Typed access to the official mapping with messages that name the key."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config

    def _raw(self, key: str, default: Any = None) -> Any:
        if key not in self.config:
            if default is not None:
                return default
            raise ValueError(f"official DiT config: missing key {key!r}")
        return self.config[key]

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"official DiT config: {key!r} must be a positive integer, got {value!r}")
        return value

    def sequence(self, key: str) -> list:
        value = self._raw(key)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"official DiT config: {key!r} must be a list, got {value!r}")
        return list(value)

    def choice(self, key: str, allowed: set, default: Any = None) -> Any:
        value = self._raw(key, default)
        if value not in allowed:
            raise ValueError(f"official DiT config: {key}={value!r} is not supported by this port "
                             f"(supported: {sorted(map(repr, allowed))})")
        return value


def _alternating(num_layers: int) -> tuple[bool, ...]:
    return tuple(i % 2 == 1 for i in range(num_layers))


# The released models (configs_3b/main.yaml and configs_7b/main.yaml, resolved; model-spec.md 3.1, 6).
PRESETS: dict[str, DiTConfig] = {
    "3b": DiTConfig(dim=2560, txt_in_dim=5120, heads=20, head_dim=128, num_layers=32, mm_layers=10,
                    mlp="swiglu", mlp_hidden=6912, rope="mmrope3d", rope_dim=128, out_norm=True,
                    last_block_vid_only=True, window_shifted=_alternating(32)),
    "7b": DiTConfig(dim=3072, txt_in_dim=5120, heads=24, head_dim=128, num_layers=36, mm_layers=36,
                    mlp="gelu", mlp_hidden=12288, rope="pixel3d", rope_dim=64, out_norm=False,
                    last_block_vid_only=False, window_shifted=_alternating(36)),
}
