"""VAE configuration: the official `s8_c16_t4_inflation_sd3.yaml` mapping, validated once.

`VAEConfig.from_mapping` accepts the mapping exactly as the official code stores it (the golden
fixtures carry it as JSON in the safetensors metadata key ``config``) and refuses settings this
port does not implement, instead of silently building a different network.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Keys of the official mapping that do not change the inference network (training switches, the
# diffusers defaults the wrapper ignores, the OmegaConf instantiation target).
_IGNORED_KEYS = frozenset({
    "__object__", "freeze_encoder", "gradient_checkpoint", "sample_size", "force_upcast",
    "scaling_factor",  # the diffusers 0.18215 default; SeedVR2 scales latents outside the model
    "slicing_up_num",  # only splits the upsampler input in two; mathematically a no-op
})
# Keys whose value must be exactly this (what SeedVR2 uses and this port implements).
_FIXED_VALUES: dict[str, Any] = {
    "act_fn": "silu",
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "time_receptive_field": "full",
    "extra_cond_dim": None,
}
# "pad" and "tail" only choose how 2-D weights are inflated to 3-D at init; loaded 3-D weights
# make them irrelevant.
_INFLATION_MODES = ("pad", "tail")


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of the causal video VAE. Defaults are the released SeedVR2 VAE (250,648,227 params)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder resnets per block; decoder blocks have one more
    norm_num_groups: int = 32
    temporal_scale_num: int = 2  # number of 2x temporal down/up-sampling stages
    slicing_sample_min_size: int = 4  # official causal slicing: frames per temporal chunk
    mid_block_attention: bool = True

    def __post_init__(self) -> None:
        blocks = len(self.block_out_channels)
        if blocks < 1:
            raise ValueError("VAE config: block_out_channels must name at least one block")
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAE config: {name} must be positive, got {getattr(self, name)}")
        bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
        if bad:
            raise ValueError(f"VAE config: every block_out_channels entry must be a positive multiple of "
                             f"norm_num_groups={self.norm_num_groups}; got {list(self.block_out_channels)}")
        if not 0 <= self.temporal_scale_num <= blocks - 1:
            raise ValueError(f"VAE config: temporal_scale_num={self.temporal_scale_num} needs that many down-sampling "
                             f"blocks, but {blocks} blocks have only {blocks - 1}")
        if self.slicing_sample_min_size % self.temporal_factor:
            raise ValueError(f"VAE config: slicing_sample_min_size={self.slicing_sample_min_size} must be a multiple "
                             f"of the temporal factor {self.temporal_factor}")

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along height and width (8 for SeedVR2)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (4 for SeedVR2: T frames -> (T-1)/4 + 1)."""
        return 2 ** self.temporal_scale_num

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | str) -> VAEConfig:
        """Build from the official config mapping (or its JSON text), refusing what is not implemented."""
        if isinstance(mapping, str):
            try:
                mapping = json.loads(mapping)
            except json.JSONDecodeError as exc:
                raise ValueError(f"VAE config: text is not JSON ({exc}); pass a mapping, a VAEConfig or 'default'") from None
        if not isinstance(mapping, Mapping):
            raise ValueError(f"VAE config: expected a mapping, got {type(mapping).__name__}")
        fields = {"in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                  "norm_num_groups", "temporal_scale_num", "slicing_sample_min_size"}
        known = fields | _IGNORED_KEYS | set(_FIXED_VALUES) | {
            "attention", "inflation_mode", "down_block_types", "up_block_types",
            "spatial_downsample_factor", "temporal_downsample_factor"}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"VAE config: unknown key(s) {unknown}; this port implements the SeedVR2 VAE "
                             f"(models/video_vae_v3/s8_c16_t4_inflation_sd3.yaml) and knows {sorted(known)}")
        for key, want in _FIXED_VALUES.items():
            if key in mapping and mapping[key] != want:
                raise ValueError(f"VAE config: {key}={mapping[key]!r} is not supported (SeedVR2 uses {want!r})")
        if mapping.get("inflation_mode", "pad") not in _INFLATION_MODES:
            raise ValueError(f"VAE config: inflation_mode={mapping['inflation_mode']!r}; expected one of {_INFLATION_MODES}")
        kwargs = {k: mapping[k] for k in fields if k in mapping}
        if "block_out_channels" in kwargs:
            kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
        if "attention" in mapping:
            kwargs["mid_block_attention"] = bool(mapping["attention"])
        config = cls(**kwargs)
        _check_block_types(mapping, "down_block_types", "DownEncoderBlock3D", len(config.block_out_channels))
        _check_block_types(mapping, "up_block_types", "UpDecoderBlock3D", len(config.block_out_channels))
        for key, value in (("spatial_downsample_factor", config.spatial_factor),
                           ("temporal_downsample_factor", config.temporal_factor)):
            if key in mapping and mapping[key] != value:
                raise ValueError(f"VAE config: {key}={mapping[key]} contradicts the blocks, which give {value}")
        return config


def _check_block_types(mapping: Mapping[str, Any], key: str, want: str, blocks: int) -> None:
    if key not in mapping:
        return
    types = list(mapping[key])
    if types != [want] * blocks:
        raise ValueError(f"VAE config: {key}={types}; expected {blocks} x {want!r} (one per block_out_channels entry)")


def resolve_config(config: VAEConfig | Mapping[str, Any] | str) -> VAEConfig:
    """`"default"` -> the released VAE; a `VAEConfig` as is; anything else via `from_mapping`."""
    if isinstance(config, VAEConfig):
        return config
    if isinstance(config, str) and config == "default":
        return VAEConfig()
    return VAEConfig.from_mapping(config)
