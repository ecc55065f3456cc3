"""A CPU stand-in for a CUDA device with a side stream, strict enough to fail on every ordering bug.

`DeferredBackend` plugs into `apply_block_swap(..., backend=...)` and emulates what the CUDA path
relies on, on the CPU:

* Compute is synchronous (it is the CPU), so an event recorded on the compute stream is complete
  at once and carries the time it was recorded.
* Copies issued on the side stream do NOT land when issued: the destination is poisoned (all
  bytes 0xFF: NaN for floats) and the copy waits in a queue until something waits for an event
  recorded after it (`stream_wait` on the compute stream, `host_wait`, `synchronize`). Compute
  that reads a slot without waiting for its `ready` event therefore reads NaNs.
* A copy into memory compute may still read must be fenced: each destination region remembers
  when compute last started using it (when compute waited for a copy into it, or when the arena
  was allocated from memory the allocator may have recycled); the side stream must have waited
  for a compute event recorded at or after that moment, else `OrderingError`.
* Device memory dropped by the engine (`free`) must have no copy still queued into it.
* Pinning is recorded (and can be refused); every registration must be undone.

`MasterReadDetector` is a TorchFunctionMode that flags any op reading a host master: between
uses, weights live in the masters, and the device copy is what compute must use.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from blockswap.backend import DeviceBackend


class OrderingError(AssertionError):
    pass


@dataclass(eq=False)
class FakeEvent:
    stream: str | None = None
    time: int | None = None      # when it completed (compute: when recorded)
    done: bool = False
    token: int | None = None     # side-stream queue position of its record
    dst: tuple[int, int] | None = None  # the copy it follows, if any


@dataclass
class _Region:
    start: int
    end: int
    last_use: int


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


@dataclass
class DeferredBackend(DeviceBackend):
    refuse_pins: int = 0                 # refuse this many registrations first
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kind = "cuda"
    asynchronous = True

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._clock = itertools.count(1)
        self._tokens = itertools.count(1)
        self.queue: list[tuple] = []
        self.regions: list[_Region] = []
        self.side_fence_time = 0
        self.registered: dict[int, int] = {}
        self.register_calls = 0
        self.copies_issued = 0
        self._last_dst: tuple[int, int] | None = None

    # streams and events
    def side_stream(self) -> str:
        return "side"

    def compute_stream(self) -> str:
        return "compute"

    def event(self, timing: bool = False) -> FakeEvent:
        return FakeEvent()

    def record(self, event: FakeEvent, stream: str) -> None:
        with self._lock:
            event.stream = stream
            if stream == "compute":
                event.time, event.done, event.token, event.dst = next(self._clock), True, None, None
            else:
                event.time, event.done, event.token = None, False, next(self._tokens)
                event.dst, self._last_dst = self._last_dst, None
                self.queue.append(("record", event, event.token))

    def stream_wait(self, stream: str, event: FakeEvent) -> None:
        with self._lock:
            if event.stream is None:  # never recorded: CUDA treats it as complete
                return
            if stream == "compute":
                if event.stream == "side":
                    self._flush(event.token)
                    if event.dst is not None:  # compute may read that destination from now on
                        self._use(event.dst, next(self._clock))
            else:  # ops issued later on the side stream are ordered after this point of compute
                if event.stream == "compute":
                    self.side_fence_time = max(self.side_fence_time, event.time)
                self.queue.append(("wait", event))

    def host_wait(self, event: FakeEvent) -> None:
        with self._lock:
            if event.stream == "side":
                self._flush(event.token)

    def synchronize(self) -> None:
        with self._lock:
            self._flush(None)

    # memory
    def copy_async(self, dst: torch.Tensor, src: torch.Tensor, stream: str) -> None:
        assert stream == "side", "copies go on the side stream"
        with self._lock:
            span = _span(dst)
            self._check_fenced(span)
            with torch.inference_mode(False):
                dst.view(torch.uint8).fill_(0xFF)
            self.queue.append(("copy", dst, src))
            self._last_dst = span
            self.copies_issued += 1

    def allocate(self, nbytes: int) -> torch.Tensor:
        buf = super().allocate(nbytes)
        with self._lock:
            self._use(_span(buf), next(self._clock))  # recycled memory: compute may be using it
        return buf

    def free(self, buffer: torch.Tensor) -> None:
        with self._lock:
            start, end = _span(buffer)
            for op in self.queue:
                if op[0] == "copy":
                    s, e = _span(op[1])
                    if s < end and start < e:
                        raise OrderingError("device memory dropped while a copy into it is still queued "
                                            "(offload without synchronising)")

    def register_host(self, buffer: torch.Tensor) -> bool:
        with self._lock:
            self.register_calls += 1
            if self.refuse_pins > 0:
                self.refuse_pins -= 1
                return False
            self.registered[buffer.data_ptr()] = buffer.numel() * buffer.element_size()
            return True

    def unregister_host(self, ptr: int) -> None:
        with self._lock:
            assert self.registered.pop(ptr, None) is not None, "unregistering a range that is not registered"

    def is_registered(self, buffer: torch.Tensor) -> bool:
        return buffer.data_ptr() in self.registered

    # internals
    def _use(self, span: tuple[int, int], time: int) -> None:
        self.regions.append(_Region(span[0], span[1], time))

    def _check_fenced(self, span: tuple[int, int]) -> None:
        start, end = span
        needed = max((r.last_use for r in self.regions if r.start < end and start < r.end), default=0)
        if self.side_fence_time < needed:
            raise OrderingError(f"a copy into device memory that compute used at t={needed} was issued after a "
                                f"fence from t={self.side_fence_time} only (no 'free' fence before reusing it)")

    def _flush(self, until: int | None) -> None:
        while self.queue:
            op = self.queue.pop(0)
            if op[0] == "wait":
                pass
            elif op[0] == "copy":
                with torch.inference_mode(False):
                    op[1].copy_(op[2])
            else:
                event = op[1]
                event.done, event.time = True, next(self._clock)
                if op[2] == until:
                    return

    def pending_copies(self) -> int:
        return sum(1 for op in self.queue if op[0] == "copy")


class MasterReadDetector(TorchFunctionMode):
    """Records every op that reads memory inside one of `buffers` (the host masters), except the
    engine's own bookkeeping (rebinding `.data`, copying a master into device memory)."""

    ENGINE_OPS = {"__set__", "__get__", "copy_"}

    def __init__(self, buffers: list[torch.Tensor]):
        super().__init__()
        self.spans = [_span(b) for b in buffers if b.numel()]
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.ENGINE_OPS:
            return func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        for t in flat:
            if isinstance(t, torch.Tensor) and not t.is_meta and t.numel():
                ptr = t.data_ptr()
                if any(s <= ptr < e for s, e in self.spans):
                    self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)
