"""``torch.compile`` of the VAE's norm -> SiLU -> causal conv steps (``SpeedOptions.vae_compile``).

What is compiled: `norm_silu_conv`, a pure tensor function doing what `blocks.norm_conv` does for
one chunk: the frame-wise GroupNorm (fp32 statistics) and SiLU, the causal time padding (the
cached tail or the repeated first frame) and the 3-D convolution; it also returns the frames the
next chunk needs. Inductor fuses the norm, the SiLU and the write into the padded conv input into
one pass over the chunk (eager: a group_norm and a SiLU kernel per frame); the convolution stays
the same library call (cuDNN / oneDNN). Every `ResnetBlock` (two such steps each) and the
encoder's and decoder's output heads go through it: that is most of the VAE's non-conv work.

Design and invariants:

* The causal state stays out of the graph: `compiled_norm_conv` (plain Python, never traced)
  looks the tail up in the `CausalCache`, calls the compiled function and stores the returned tail.
  The compiled function sees tensors and a few ints only, so no guard depends on a cache or a
  module, and the weights are passed as tensor arguments (detached: dynamo would give
  ``nn.Parameter`` arguments static shapes).
* One compiled function for all: every block and both VAE halves share the compiled
  ``norm_silu_conv`` of a backend (`kernels`), like the DiT's `compile_blocks`; the graphs
  depend on the structure of a call, never on which block makes it. There are two entry points
  with their own code objects (and so their own dynamo recompile budget): the first chunk of a
  clip or tile (head = repeated first frame) and later chunks (head = the cached tail).
* Shapes are dynamic: compiled with ``dynamic=True``, so channel counts, tile sizes and chunk
  lengths are symbols, not constants. What still compiles a new graph: a size of 1 (batch 1,
  one-frame chunks and the frame-by-frame stages are specialised by dynamo), equal sizes (dynamo
  gives equal sizes one symbol, e.g. square tiles, ``c_in == c_out``), the dtype and the memory
  format. That is a bounded handful per entry point for a whole encode + decode
  (tests/test_speed_vae_compile.py counts them), far below dynamo's recompile limit (8 per
  entry point); past the limit dynamo would run the function eagerly (still correct).
* The switch is read at each call: `VideoVAE` enters `compiled_scope(speed.vae_compile)` around
  every encode/decode (``vae.speed``, set by `seedvr2.speed.apply_speed`), and `blocks.norm_conv`
  asks `active` which path to take. Off runs the unchanged eager code, bit for bit; nothing is
  stored on the modules, so toggling works on a cached model, and the scope is a ContextVar, so
  two threads running two VAEs do not see each other's setting.
* Numbers: equal to eager within rounding (fp32: ~1e-6 relative; the fused kernel computes the
  statistics in another order and rounds once after norm + SiLU where eager rounds twice, which
  matters in 16-bit only: one bf16 rounding step at most).
* Works under ``torch.inference_mode()`` (ComfyUI runs nodes in it) and ``torch.no_grad()``.

Cost: compile time on the first call of each structure (a few seconds each on a CPU, tens of
seconds for a whole VAE on a GPU, cached on disk by inductor for later processes). Memory: the
padded conv input is one buffer as in eager; no extra activation copy.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # dynamo gives equal sizes one symbol ("duck sizing"); our calls compile without it (see below)
    from torch.fx.experimental import _config as _fx_config
except ImportError:  # pragma: no cover - older torch: duck sizing stays on (more graphs, same numbers)
    _fx_config = None

from .causal_conv import CausalCache, CausalConv3d

__all__ = ["BACKEND", "CompiledNormConv", "kernels", "compiled_scope", "active", "compiled_norm_conv",
           "norm_silu_pad"]

BACKEND: str | Callable = "inductor"  # what torch.compile compiles with (tests may set a counting backend)


def norm_silu_pad(x: Tensor, head: Tensor | None, norm_weight: Tensor, norm_bias: Tensor, groups: int, eps: float,
                  head_frames: int) -> Tensor:
    """``pad_t(silu(frame_group_norm(x)))``: a causal conv's time-padded input for one chunk.

    ``x`` (b, c, t, h, w) -> (b, c, head_frames + t, h, w) in x's dtype. ``head`` (b, c, head_frames,
    h, w) is the cached tail of the previous chunk, or None to repeat the first normalised frame
    (first chunk). Statistics per frame and group in fp32, as `blocks.FrameGroupNorm`.
    """
    b, c, t, h, w = x.shape
    grouped = x.float().view(b, groups, c // groups, t, h, w)
    var, mean = torch.var_mean(grouped, dim=(2, 4, 5), correction=0, keepdim=True)
    normed = ((grouped - mean) * torch.rsqrt(var + eps)).view(b, c, t, h, w)
    normed = normed * norm_weight.float().view(1, c, 1, 1, 1) + norm_bias.float().view(1, c, 1, 1, 1)
    body = F.silu(normed).to(x.dtype)
    if head is None:
        head = body[:, :, :1].expand(-1, -1, head_frames, -1, -1)
    return torch.cat([head, body], dim=2)


def _first_chunk(x: Tensor, norm_weight: Tensor, norm_bias: Tensor, groups: int, eps: float,
                 head_frames: int) -> Tensor:
    """Entry point for a clip's (or tile's) first chunk; its own code object, so its own graphs."""
    return norm_silu_pad(x, None, norm_weight, norm_bias, groups, eps, head_frames)


def _later_chunk(x: Tensor, head: Tensor, norm_weight: Tensor, norm_bias: Tensor, groups: int, eps: float,
                 head_frames: int) -> Tensor:
    """Entry point for later chunks (head = the tail cached by the previous chunk)."""
    return norm_silu_pad(x, head, norm_weight, norm_bias, groups, eps, head_frames)


@dataclass(frozen=True)
class CompiledNormConv:
    """The two compiled entry points of one backend (shared by every block and both VAE halves)."""

    first_chunk: Callable
    later_chunk: Callable


_KERNELS: dict[object, CompiledNormConv] = {}


def kernels(backend: str | Callable | None = None) -> CompiledNormConv:
    """The compiled entry points for ``backend`` (default `BACKEND`), created once per backend.

    Creating them compiles nothing: dynamo traces on the first call of each structure."""
    backend = BACKEND if backend is None else backend
    found = _KERNELS.get(backend)
    if found is None:
        found = _KERNELS[backend] = CompiledNormConv(torch.compile(_first_chunk, backend=backend, dynamic=True),
                                                     torch.compile(_later_chunk, backend=backend, dynamic=True))
    return found


_ACTIVE: ContextVar[CompiledNormConv | None] = ContextVar("seedvr2_vae_compiled", default=None)


def active() -> CompiledNormConv | None:
    """The compiled entry points when the current VAE call has ``vae_compile`` on, else None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def compiled_scope(enabled: bool) -> Iterator[None]:
    """Within the block, `blocks.norm_conv` runs compiled (``enabled``) or eager; restored after."""
    token = _ACTIVE.set(kernels() if enabled else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def compiled_norm_conv(compiled: CompiledNormConv, norm: torch.nn.GroupNorm, conv: CausalConv3d, x: Tensor,
                       cache: CausalCache | None) -> Tensor:
    """`blocks.norm_conv` with the norm, SiLU and time padding compiled: the cache look-up, the
    store of the tail and the convolution run here, eagerly (the same calls as the eager path)."""
    k_t, s_t = conv.kernel_size[0], conv.stride[0]
    head_frames = conv.head_frames(cache)
    if head_frames == 0:  # a 1-frame kernel: no padding, nothing to fuse into
        return conv(norm(x, silu=True), cache)
    args = (norm.weight.detach(), norm.bias.detach(), norm.num_groups, float(norm.eps), head_frames)
    with _no_duck_sizing():
        if cache is not None and cache.has(conv):
            padded = compiled.later_chunk(x, cache.tail(conv, x.device).to(x.dtype), *args)
        else:
            padded = compiled.first_chunk(x, *args)
    if cache is not None and k_t > s_t:
        cache.store(conv, padded[:, :, padded.shape[2] - (k_t - s_t):])
    return F.conv3d(padded, conv.weight, conv.bias, conv.stride, conv.padding)


def _no_duck_sizing() -> contextlib.AbstractContextManager:
    """Compile without duck sizing: otherwise two sizes that happen to be equal at the first call
    (a square tile, 128 channels at 128 px) share one symbol and the next call where they differ
    compiles another graph. Read at compile time only; guards of compiled graphs ignore it."""
    if _fx_config is None or not hasattr(_fx_config, "use_duck_shape"):
        return contextlib.nullcontext()
    return _fx_config.patch(use_duck_shape=False)
