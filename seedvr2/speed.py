"""Speed switches: the fast paths of the VAE and the DiT, each one on/off, so a bench can run fast
against eager on the same inputs (``bench/e2e.py --check``).

`SpeedOptions` fields (a bench's ``--variant`` maps onto them; ``SpeedOptions.eager()`` turns every
one off, ``SpeedOptions()`` is the default):

* ``cudnn_benchmark`` (default True): cuDNN autotuning of the VAE's 3-D convolutions, switched on
  for the duration of each VAE encode/decode only and restored after (``torch.backends.cudnn.
  benchmark`` is process-wide). CUDA only; a no-op elsewhere. Numbers: cuDNN may pick another
  algorithm, so results match eager up to the algorithm's rounding, not bitwise. Memory: the chosen
  algorithm's workspace (PyTorch only tries algorithms whose workspace fits the free memory).
  Each new tile/chunk shape costs one tuning pass (tiles come in a few sizes).
* ``channels_last`` (default False): the VAE's conv weights, and through them the time-padded inputs
  of its causal convs, in ``channels_last_3d`` memory format (NDHWC, what tensor-core 3-D conv
  kernels use natively; cuDNN converts NCDHW otherwise). Meant for CUDA; it also runs on the CPU,
  where it does not pay (bench/vae_speed.py) and is tested against contiguous within fp32 rounding
  (the CPU kernels differ). Memory: unchanged (a layout, not a copy; weights converted in place).
* ``tile_batch`` (default 1 = off): up to this many VAE tiles of equal size stacked on the batch dim
  per call. Exact per tile (GroupNorm, attention and causal state are per sample); results equal the
  tile-by-tile run up to the conv kernels' rounding and the order in which overlapping tiles are
  summed. Memory: the VAE's working set (activations and causal state) grows ``tile_batch``-fold,
  so it is off by default and only worth it when the memory plan left room (few, small tiles).
* ``dit_compile`` (default False): ``torch.compile`` of each DiT block's body, working under block
  swap (the swap hooks are excluded from the graph, see `blockswap.engine`); all blocks of one
  configuration share one compiled graph (no recompile per block). See
  `seedvr2.dit.model.compile_blocks`.
* ``vae_compile`` (default False): ``torch.compile`` (inductor) of the VAE's norm -> SiLU ->
  time-pad steps (the body of every resnet block and the output heads up to their conv): the
  frame-wise GroupNorm, the SiLU and the write into the conv's time-padded input fuse into one
  pass; the convolutions and the causal cache stay eager, outside the graph. All blocks share one
  compiled function (two entry points: first chunk, later chunks) with dynamic shapes, so tiles
  and chunks of other sizes reuse a bounded handful of graphs (5 for a tiled, chunked encode +
  decode), never one per block or per size. See `seedvr2.vae.compiled`. Numbers: eager within
  rounding (fp32 ~1e-6; tested on the CPU with inductor, and on a GPU by bench/gpu_check.py's CUDA
  tests). Cost: compile time on the first encode and decode of a process (inductor caches the
  kernels on disk for the next). Default off: the convolutions, which it leaves alone, are most of
  the VAE's time; on a 2-core CPU (real VAE, fp32, 9 frames 128², bench/vae_speed.py) it saved
  3 % in steady state (decode 5 %, encode nothing), about the noise of that shared machine, for
  tens of seconds of compiling in the first call. To turn it
  on by default, a device run of ``bench/vae_speed.py --device cuda --dtype bf16 --variants
  default compile --warmup 1`` at the shipped tile and chunk sizes must show ``compile`` faster in
  steady state (a few % at least), max |diff| within bf16 rounding of ``default``, and a first
  call (``first call s``) whose compile time one typical upscale repays; bench/e2e.py
  ``vae_compile`` vs ``fast`` must agree.

The VAE reads its options from ``vae.speed`` (a plain attribute, like ``NaDiT.attention``) at each
call; `apply_speed` sets both models' options in one go.

Users reach the switches through `SpeedOptions.from_switches` (the CLI's ``--compile``,
``--channels-last``, ``--no-cudnn-benchmark``; the DiT loader node's ``torch_compile``): the one
place that maps what a user turns on to the fields it sets, so a new fast path that belongs under
an existing switch (e.g. compiling the VAE under ``compile``) is one line there.
`compile_unavailable` says, before any model loads, why ``torch.compile`` cannot run on a device.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import nn

__all__ = ["SpeedOptions", "apply_speed", "compile_unavailable", "vae_call_context", "set_conv_memory_format"]


@dataclass(frozen=True)
class SpeedOptions:
    """Which fast paths run; see the module docstring for what each costs and how exact it is."""

    cudnn_benchmark: bool = True
    channels_last: bool = False
    tile_batch: int = 1
    dit_compile: bool = False
    vae_compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.tile_batch, int) or isinstance(self.tile_batch, bool) or self.tile_batch < 1:
            raise ValueError(f"SpeedOptions.tile_batch must be an integer >= 1 (1 = one tile per VAE call), "
                             f"got {self.tile_batch!r}")
        for f in fields(self):
            if f.name != "tile_batch" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"SpeedOptions.{f.name} must be True or False, got {getattr(self, f.name)!r}")

    @classmethod
    def eager(cls) -> SpeedOptions:
        """Every fast path off: the reference the fast paths are checked against."""
        return cls(cudnn_benchmark=False, channels_last=False, tile_batch=1, dit_compile=False, vae_compile=False)

    @classmethod
    def from_switches(cls, *, compile: bool = False, channels_last: bool = False,
                      cudnn_benchmark: bool = True) -> SpeedOptions:
        """What a user turns on -> the options (every other field at its default).

        compile: ``torch.compile`` where it pays (the DiT's blocks). channels_last: the VAE's convs
        channels-last-3d. cudnn_benchmark: cuDNN autotuning of the VAE's convs (on by default).
        A switch that is not a bool is refused by its own name (the caller's option names it)."""
        switches = {"compile": compile, "channels_last": channels_last, "cudnn_benchmark": cudnn_benchmark}
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"speed switch {name} must be True or False, got {value!r}")
        return cls(cudnn_benchmark=cudnn_benchmark, channels_last=channels_last, dit_compile=compile)


def set_conv_memory_format(module: nn.Module, channels_last: bool) -> None:
    """Store every 5-D conv weight of ``module`` channels-last-3d (or contiguous), in place.

    A no-op for weights already in that format; the causal convs allocate their padded inputs in
    the format of their weight, so this one switch moves activations too.
    """
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv3d) and not m.weight.is_contiguous(memory_format=fmt):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)


@contextlib.contextmanager
def vae_call_context(options: SpeedOptions, device: torch.device) -> Iterator[None]:
    """Scope of one VAE encode/decode: cuDNN autotuning on CUDA when asked, restored afterwards
    (also on an exception)."""
    if device.type != "cuda" or not options.cudnn_benchmark:
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or None when it can.

    Checked before a model loads, so a missing piece is one clear message instead of a compiler
    traceback at the first forward: dynamo on this Python, Triton for CUDA, a C++ compiler for the
    CPU (inductor builds its CPU kernels with it)."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return (f"torch.compile is not supported with torch {torch.__version__} on Python "
                f"{sys.version_info.major}.{sys.version_info.minor} here")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return ("torch.compile on CUDA needs Triton, which is not installed or does not work here "
                    "(pip install triton; on Windows: pip install triton-windows)")
    elif device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except ImportError:
            return None  # another torch layout: let inductor report for itself
        except Exception as exc:  # noqa: BLE001 - inductor's own error type varies by version
            return (f"torch.compile on the CPU needs a C++ compiler (g++ or clang++, or set CXX): "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    return None


def apply_speed(options: SpeedOptions, *, vae: nn.Module | None = None, dit: nn.Module | None = None) -> None:
    """Give the models their fast paths: ``vae.speed = options`` (read by the VAE at each encode and
    decode, ``vae_compile`` included); the DiT's blocks compiled (or back to eager) per
    ``options.dit_compile``."""
    if not isinstance(options, SpeedOptions):
        raise TypeError(f"apply_speed: options must be a SpeedOptions, got {type(options).__name__}")
    if vae is not None:
        vae.speed = options
    if dit is not None:
        from .dit.model import compile_blocks

        compile_blocks(dit, options.dit_compile)
