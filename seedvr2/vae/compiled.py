"""``torch.compile`` of the VAE's norm -> SiLU -> time-pad steps (``SpeedOptions.vae_compile``).

What is compiled: `norm_silu_pad`, a pure tensor function doing the non-conv half of
`blocks.norm_conv` for one chunk: the frame-wise GroupNorm (fp32 statistics), the SiLU and the
causal time padding (the cached tail or the repeated first frame), i.e. the time-padded input of
the next causal conv. Inductor fuses the norm, the SiLU and the write into the padded buffer into
one pass over the chunk per step (eager: a group_norm and a SiLU kernel per frame, then the head
copy). Every `ResnetBlock` (two such steps each) and the encoder's and decoder's output heads go
through it. The convolution itself stays out of the graph: the same library call (cuDNN/oneDNN)
as eager, and inside a graph inductor would specialise on the weight's shape, i.e. compile one
graph per channel count.

Design and invariants:

* The causal state stays out of the graph: `compiled_norm_conv` (plain Python, never traced)
  looks the tail up in the `CausalCache`, calls the compiled function, stores the new tail (the
  last frames of the padded buffer) and runs the conv. The compiled function sees tensors and a
  few numbers only, so no guard depends on a cache or a module; weights are passed as detached
  tensors (dynamo would give ``nn.Parameter`` arguments static shapes).
* One compiled function for all: every block and both VAE halves share the compiled
  ``norm_silu_pad`` of a backend (`kernels`), like the DiT's `compile_blocks`; graphs depend on
  the structure of a call, never on which block makes it. Two entry points with their own code
  objects (so their own dynamo recompile budget): the first chunk of a clip or tile (head =
  repeated first frame) and later chunks (head = the cached tail).
* Shapes are dynamic (``dynamic=True``, and compiled without dynamo's "duck sizing", which would
  tie sizes that happen to be equal, e.g. a square tile): channel counts, tile sizes and chunk
  lengths are symbols. What still compiles a new graph: a size of 1 (one-frame chunks and the
  frame-by-frame stages; batch 1 vs ``tile_batch`` > 1), a frame sliced out of a chunk (other
  strides), the dtype. A tiled, chunked encode + decode compiles 5 graphs in all (tests/
  test_speed_vae_compile.py bounds it), other sizes reuse them; dynamo's limit is 8 per entry
  point, past which it would run the function eagerly (still correct, slower).
* The switch is read at each call: `VideoVAE` enters `compiled_scope(speed.vae_compile)` around
  every encode/decode (``vae.speed``, set by `seedvr2.speed.apply_speed`), and `blocks.norm_conv`
  asks `active` which path to take. Off runs the unchanged eager code, bit for bit; nothing is
  stored on the modules, so toggling works on a cached model, and the scope is a ContextVar, so
  two threads running two VAEs do not see each other's setting.
* Numbers: equal to eager within rounding (fp32 ~1e-6: the fused statistics sum in another
  order; in bf16 the fused kernel rounds once after norm + SiLU where eager rounds after each, as
  close to the fp32 result as eager bf16 is).
* Works under ``torch.inference_mode()`` (ComfyUI runs nodes in it) and ``torch.no_grad()``.

Cost: compile time on the first encode/decode of a process (5 small graphs: tens of seconds on a
2-core CPU with a cold inductor cache; inductor caches them on disk for later processes). Memory:
as eager (the padded buffer is the graph's output, no extra copy). With ``channels_last`` also on,
the padded buffer comes out contiguous (the conv converts it).
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
