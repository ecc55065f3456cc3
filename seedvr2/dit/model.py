"""The SeedVR2 NaDiT (3B ``dit_v2`` and 7B ``dit``), one module for both, shaped by ``DiTConfig``.

Calling convention (official, model-spec.md 3.3): samples are packed along tokens.
``forward(vid, txt, vid_shape, txt_shape, timestep)`` with ``vid (sum T*H*W, 33)`` channel-last
latent grids flattened (t, h, w) row-major, ``vid_shape (b, 3)`` the grids in latent units,
``txt (sum L, txt_in_dim)``, ``txt_shape (b, 1)``, ``timestep (b,)``; returns the v-prediction
``(sum T*H*W, 16)`` in the same layout and in the dtype of ``vid``. A batch gives exactly the
per-sample results (the official batched 3B forward does not; see model-spec.md 3.4).

Compute dtype: activations run in ``model.compute_dtype`` when it is set (``load_dit`` sets it:
bf16 where supported, else fp16), otherwise in the dtype of ``vid``. Weights stay in their storage
dtype (fp32/fp16/bf16/fp8_e4m3fn) and every layer casts them to the activation dtype when it uses
them, so fp8 weights are upcast one layer at a time. Norm statistics, rope angles and rotation, and
the timestep sinusoid are computed in fp32.

Block swap contract: the root module holds no parameters, only submodules. The IO modules
(``vid_in``, ``txt_in``, ``emb_in``, ``vid_out`` and, for the 3B, ``vid_out_norm``,
``vid_out_ada``) and every block are invoked through ``__call__``, blocks as ``self.blocks[i](...)``
in index order, once per forward. Per-call state (window plans, rope tables, token counts) is
built per forward and passed as arguments; nothing is cached on modules and no module is moved.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .attention import check_attention_backend, resolve_attention_backend
from .block import MMBlock
from .config import PRESETS, DiTConfig
from .layers import Linear, OutAda, PatchIn, PatchOut, RMSNorm, TimeEmbedding
from .windows import WindowPlan, build_window_plan

__all__ = ["NaDiT", "build_dit", "default_compute_dtype", "compile_blocks"]


class NaDiT(nn.Module):
    """SeedVR2 diffusion transformer. Build with ``build_dit`` or load with ``load_dit``.

    Settings (plain attributes, read at each call): ``compute_dtype`` (None: the dtype of ``vid``)
    and ``attention`` (backend name, see ``seedvr2.dit.attention``).
    """

    def __init__(self, config: DiTConfig, *, attention: str = "sdpa"):
        super().__init__()
        self.config = config
        self.attention = check_attention_backend(attention)
        self.compute_dtype: torch.dtype | None = None
        c = config
        self.vid_in = PatchIn(c.vid_in_channels, c.dim)
        self.txt_in = Linear(c.txt_in_dim, c.dim)
        self.emb_in = TimeEmbedding(c.dim, c.emb_dim)
        self.blocks = nn.ModuleList(MMBlock(c, i) for i in range(c.num_layers))
        if c.out_norm:
            self.vid_out_norm = RMSNorm(c.dim, c.norm_eps)
            self.vid_out_ada = OutAda(c.dim)
        self.vid_out = PatchOut(c.dim, c.vid_out_channels)

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, vid_shape: torch.Tensor, txt_shape: torch.Tensor,
                timestep: torch.Tensor, *, attention: str | None = None,
                window: tuple[int, int, int] | None = None) -> torch.Tensor:
        """See the module docstring. ``attention`` overrides the backend for this call; ``window``
        the window size (t, h, w) in tokens (None: from each grid's aspect, the official rule; DiT
        tiles pass the whole grid's, `seedvr2.dit.tiling`)."""
        grids, txt_lens = self._check_inputs(vid, txt, vid_shape, txt_shape, timestep)
        dtype = self.compute_dtype or vid.dtype
        backend = resolve_attention_backend(check_attention_backend(attention or self.attention), vid.device)

        # 1. Inputs: text projection, patchify + projection, timestep embedding (all on vid's device)
        txt_h = self.txt_in(txt.to(vid.device, dtype))  # (Lt, dim)
        vid_h = self.vid_in(vid.to(dtype), grids)  # (L/4, dim)
        emb = self.emb_in(timestep.reshape(-1).to(vid.device), dtype)  # (b, 6*dim)

        # 2. Window plans, one per window kind (regular / shifted), shared by the blocks using it
        token_grids = [(t, h // 2, w // 2) for t, h, w in grids]
        plans = {shifted: self._plan(token_grids, txt_lens, shifted, backend, vid.device, window)
                 for shifted in sorted(set(self.config.window_shifted))}

        # 3. Blocks, in index order, each through __call__ (block swap hooks)
        for i in range(len(self.blocks)):
            vid_h, txt_h = self.blocks[i](vid_h, txt_h, emb, plans[self.config.window_shifted[i]])

        # 4. Output head and un-patchify
        if self.config.out_norm:
            vid_h = self.vid_out_norm(vid_h)  # (L/4, dim)
            vid_h = self.vid_out_ada(vid_h, emb, [t * h * w for t, h, w in token_grids])  # (L/4, dim)
        return self.vid_out(vid_h, token_grids).to(vid.dtype)  # (L, 16)

    def _plan(self, token_grids, txt_lens, shifted: bool, backend: str, device: torch.device, window=None) -> WindowPlan:
        c = self.config
        return build_window_plan(token_grids, txt_lens, num_windows=c.num_windows, shifted=shifted, rope=c.rope,
                                 rope_axis_dim=c.rope_axis_dim, attention=backend, device=device, window=window)

    def _check_inputs(self, vid, txt, vid_shape, txt_shape, timestep) -> tuple[list[tuple[int, int, int]], list[int]]:
        """Validate the packed inputs once; return the latent grids and text lengths as ints."""
        c = self.config
        for name, t in (("vid", vid), ("txt", txt), ("vid_shape", vid_shape), ("txt_shape", txt_shape),
                        ("timestep", timestep)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"NaDiT: {name} must be a torch.Tensor, got {type(t).__name__}")
        if vid_shape.ndim != 2 or vid_shape.shape[1] != 3 or vid_shape.is_floating_point():
            raise ValueError(f"NaDiT: vid_shape must be an integer tensor (b, 3) of latent [T, H, W] per sample, "
                             f"got {vid_shape.dtype} {list(vid_shape.shape)}")
        b = vid_shape.shape[0]
        if txt_shape.ndim != 2 or txt_shape.shape != (b, 1) or txt_shape.is_floating_point():
            raise ValueError(f"NaDiT: txt_shape must be an integer tensor ({b}, 1) (one text length per sample), "
                             f"got {txt_shape.dtype} {list(txt_shape.shape)}")
        if timestep.numel() != b:
            raise ValueError(f"NaDiT: timestep must hold one value per sample ({b}), got shape {list(timestep.shape)}")
        grids = [tuple(g) for g in vid_shape.tolist()]
        txt_lens = [n for (n,) in txt_shape.tolist()]
        if any(t < 1 or h < 2 or w < 2 or h % 2 or w % 2 for t, h, w in grids):
            raise ValueError(f"NaDiT: every latent grid needs T >= 1 and even H, W >= 2 (1x2x2 patches), "
                             f"got vid_shape {grids}")
        if any(n < 1 for n in txt_lens):
            raise ValueError(f"NaDiT: every sample needs at least one text token, got txt_shape {txt_lens}")
        tokens = sum(t * h * w for t, h, w in grids)
        if vid.ndim != 2 or vid.shape != (tokens, c.vid_in_channels) or not vid.is_floating_point():
            raise ValueError(f"NaDiT: vid must be a float tensor ({tokens}, {c.vid_in_channels}) = (sum of T*H*W "
                             f"over vid_shape, [noise 16 | condition 16 | mask 1]), got {vid.dtype} {list(vid.shape)}")
        if txt.ndim != 2 or txt.shape != (sum(txt_lens), c.txt_in_dim) or not txt.is_floating_point():
            raise ValueError(f"NaDiT: txt must be a float tensor ({sum(txt_lens)}, {c.txt_in_dim}) (sum of "
                             f"txt_shape, text embedding width), got {txt.dtype} {list(txt.shape)}")
        return grids, txt_lens


def build_dit(config: Mapping[str, Any] | str | DiTConfig, *, attention: str = "sdpa") -> NaDiT:
    """Build a SeedVR2 DiT from the official config mapping, a preset name ("3b", "7b") or a ``DiTConfig``.

    Parameters are created on the current default device (use ``with torch.device("meta"):`` to
    build without allocating, as ``load_dit`` does). ``attention`` names the backend: "sdpa",
    "flash_emul", "flash_attn" or "auto" (flash-attn on CUDA when installed, else sdpa).
    """
    if isinstance(config, str):
        if config.lower() not in PRESETS:
            raise ValueError(f"unknown SeedVR2 DiT preset {config!r}; choose one of {sorted(PRESETS)}")
        cfg = PRESETS[config.lower()]
    elif isinstance(config, DiTConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = DiTConfig.from_official(config)
    else:
        raise TypeError(f"build_dit: config must be a preset name, an official config mapping or a DiTConfig, "
                        f"got {type(config).__name__}")
    return NaDiT(cfg, attention=attention)


def default_compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 where the device supports it, else fp16 (CUDA GPUs before Ampere)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no including_emulation and reports native support only
            native = torch.cuda.is_bf16_supported()
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16


_COMPILED_BODIES: dict[tuple[str, str | None], object] = {}


def compile_blocks(model: NaDiT, enabled: bool, *, backend: str = "inductor", mode: str | None = None) -> None:
    """``torch.compile`` every block's body (``enabled``) or go back to eager.

    All blocks share one compiled function per (backend, mode): dynamo treats a block's parameters
    as graph inputs, so blocks of one structure (and window-plan kind) reuse one graph instead of
    compiling per block; the 3B has three block structures (per-stream, shared, last vid-only)
    and two plan kinds. Block swap works unchanged whichever is applied first: its hooks wrap
    ``forward`` and are excluded from graphs (``torch.compiler.disable``), the compiled body runs
    between them, and swapping a block's weights changes their storage, not what the guards check.
    Shapes: a new token count recompiles once, after which dynamo marks it dynamic.
    Cost: compile time on the first forward of each structure (tens of seconds on a GPU).
    """
    if not enabled:
        body = None
    else:
        key = (backend, mode)
        body = _COMPILED_BODIES.get(key)
        if body is None:
            body = _COMPILED_BODIES[key] = torch.compile(MMBlock.body, backend=backend, mode=mode)
    for block in model.blocks:
        block.compiled_body = body
