"""Device primitives the engine is written against: streams, events, async copies, allocation, pinning.

The engine's ordering logic (which copy waits for what, when compute may read a slot) lives in
`transfers.py` and `ring.py` and talks only to a `DeviceBackend`. Two backends ship:

* `CudaBackend`: real CUDA streams and events; copies are `copy_(non_blocking=True)` on a side
  stream; pinning is an exact-size `cudaHostRegister` of our own buffers.
* `ImmediateBackend`: the CPU mode (`allow_cpu_device=True`, `SEEDVR2_BLOCKSWAP_CPU=1`): the same
  schedule with synchronous copies and inert events, so the streaming logic runs on any machine.

Tests add a third, a deferred-copy double that emulates a side stream on the CPU (copies land
only when something waits for them, destinations are poisoned until then, and every copy must be
fenced after the last compute use of its destination), so every ordering rule of the CUDA path
fails a CPU test when it is broken.

Every allocation is made with inference mode off: ComfyUI runs nodes under
`torch.inference_mode()`, and inference tensors cannot back normal Parameters.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch


class DeviceBackend:
    """The primitives; see the module docstring. `kind` is "cuda" or "cpu"."""

    kind = "cpu"
    asynchronous = False  # whether copies may land after `copy_async` returns

    def __init__(self, device: torch.device):
        self.device = device

    # streams and events
    def side_stream(self) -> Any:
        return None

    def compute_stream(self) -> Any:
        return None

    def event(self, timing: bool = False) -> Any:
        return None

    def record(self, event: Any, stream: Any) -> None:
        pass

    def stream_wait(self, stream: Any, event: Any) -> None:
        pass

    def host_wait(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return 0.0

    # memory
    def copy_async(self, dst: torch.Tensor, src: torch.Tensor, stream: Any) -> None:
        dst.copy_(src)

    def allocate(self, nbytes: int) -> torch.Tensor:
        with torch.inference_mode(False):
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def free(self, buffer: torch.Tensor) -> None:
        """The engine drops `buffer` (device memory); every copy into it has landed by then."""

    def register_host(self, buffer: torch.Tensor) -> bool:
        """Page-lock `buffer` in place; False when refused (with any error state cleared)."""
        return False

    def unregister_host(self, ptr: int) -> None:
        pass

    def clear_error(self) -> None:
        pass


class ImmediateBackend(DeviceBackend):
    """CPU mode: copies happen at once, events are inert, nothing is pinned."""


class CudaBackend(DeviceBackend):
    kind = "cuda"
    asynchronous = True

    def __init__(self, device: torch.device):
        super().__init__(device)
        self._side = torch.cuda.Stream(device)

    def side_stream(self) -> torch.cuda.Stream:
        return self._side

    def compute_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def event(self, timing: bool = False) -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=timing)

    def record(self, event: torch.cuda.Event, stream: torch.cuda.Stream) -> None:
        event.record(stream)

    def stream_wait(self, stream: torch.cuda.Stream, event: torch.cuda.Event) -> None:
        stream.wait_event(event)

    def host_wait(self, event: torch.cuda.Event) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        self._side.synchronize()
        torch.cuda.current_stream(self.device).synchronize()

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end)

    def copy_async(self, dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def register_host(self, buffer: torch.Tensor) -> bool:
        nbytes = buffer.numel() * buffer.element_size()
        code = int(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), nbytes, 0))
        if code != 0:
            self.clear_error()
            return False
        return True

    def unregister_host(self, ptr: int) -> None:
        if int(torch.cuda.cudart().cudaHostUnregister(ptr)) != 0:
            self.clear_error()  # a refused unregister must not poison later launches

    def clear_error(self) -> None:
        """Consume CUDA's sticky last-error after a refused runtime call, so that the next kernel
        launch (whose launch check reads the last error) does not fail spuriously. A tiny kernel
        plus a synchronize reads and resets it; the error itself was already reported to us."""
        with contextlib.suppress(RuntimeError):
            with torch.inference_mode(False):
                (torch.zeros(1, device=self.device) + 1).item()
