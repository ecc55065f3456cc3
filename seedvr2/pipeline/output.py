"""Where upscaled frames go: a preallocated tensor, or anything with `write(start, frames)`.

The pipeline emits every output frame exactly once, in order, as `[n, H, W, C]` CPU tensors of
the sink's `dtype`. A streaming sink (the CLI's video writer) therefore keeps host memory at one
batch instead of the whole video.
"""
from __future__ import annotations

import queue
import threading
from typing import Protocol, runtime_checkable

import torch

OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)


@runtime_checkable
class FrameSink(Protocol):
    """Receives output frames [n, H, W, C] (C = 3, or 4 with alpha) in order."""

    dtype: torch.dtype

    def write(self, start: int, frames: torch.Tensor) -> None: ...


class TensorSink:
    """Collects the output in one preallocated [T, H, W, C] tensor (`frames`).

    Host memory: T*H*W*C*itemsize, allocated once up front (4 bytes per value for float32, the
    ComfyUI IMAGE dtype; 1 for uint8).
    """

    def __init__(self, num_frames: int, height: int, width: int, channels: int, dtype: torch.dtype = torch.float32):
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
        self.dtype = dtype
        self.frames = torch.empty((num_frames, height, width, channels), dtype=dtype)
        self._written = torch.zeros(num_frames, dtype=torch.bool)

    def write(self, start: int, frames: torch.Tensor) -> None:
        stop = start + frames.shape[0]
        self.frames[start:stop].copy_(frames)
        self._written[start:stop] = True

    def result(self) -> torch.Tensor:
        missing = (~self._written).nonzero().flatten()
        if missing.numel():
            raise RuntimeError(f"upscale produced no output for frames {missing[:10].tolist()} (pipeline bug)")
        return self.frames


def to_output(unit: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[0, 1] float -> the sink dtype; uint8 uses upstream's rounding, round(x*255)."""
    if dtype == torch.uint8:
        return torch.round(unit * 255.0).to(torch.uint8)
    return unit.to(dtype)


class ThreadedSink:
    """Runs another sink's `write` on a worker thread, so host-side writing (video encoding, image
    conversion) overlaps the pipeline's GPU work instead of stalling it.

    * Bounded: at most ``depth`` batches wait in the queue; `write` blocks when it is full, so host
      memory holds at most ``depth + 1`` batches beyond the pipeline's own.
    * Ownership: `write` hands the frames tensor over; the caller must not change it afterwards
      (the pipeline passes a fresh tensor per call).
    * Order: batches reach the inner sink in the order they were written, from one thread.
    * Errors: an exception in the worker is re-raised in the caller (the original exception) by
      the next `write` or by `close`, later calls raise a RuntimeError chained to it; the worker then drops what is still queued, so a
      blocked `write` never deadlocks.
    * Closing: `close()` waits until everything is written and re-raises a worker error; as a
      context manager, leaving on an exception drops the queued batches and stops the worker
      without writing them (the output is being abandoned anyway). The inner sink is not closed.
      Neither returns nor raises (not even on Ctrl-C while waiting) before the worker has ended:
      the caller closes the inner sink next, from its own thread.
    """

    _STOP = object()

    def __init__(self, inner: FrameSink, depth: int = 2, name: str = "seedvr2-writer") -> None:
        if not callable(getattr(inner, "write", None)) or getattr(inner, "dtype", None) not in OUTPUT_DTYPES:
            raise ValueError(f"ThreadedSink needs a sink with write(start, frames) and a dtype among {OUTPUT_DTYPES}, "
                             f"got {type(inner).__name__}")
        if depth < 1:
            raise ValueError(f"ThreadedSink depth must be >= 1, got {depth}")
        self.inner, self.dtype = inner, inner.dtype
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._reported = False
        self._abandon = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def write(self, start: int, frames: torch.Tensor) -> None:
        if self._closed:
            raise RuntimeError("ThreadedSink.write after close()")
        self._raise_error()
        self._queue.put((start, frames))

    def close(self) -> None:
        """Write everything still queued, stop the worker, re-raise its error if any. Idempotent."""
        if not self._closed:
            self._closed = True
            self._stop()
        self._raise_error()

    def abandon(self) -> None:
        """Stop without writing what is queued (on an error in the caller). Idempotent."""
        self._abandon.set()
        if not self._closed:
            self._closed = True
            self._stop()

    def _stop(self) -> None:
        """Send the stop mark and wait for the worker. Interrupted (Ctrl-C) while waiting, the
        queue is abandoned and the wait goes on (the worker ends after the batch it is writing)
        before the interrupt propagates: the inner sink is closed next by the caller, and must
        never be used from two threads at once."""
        try:
            self._queue.put(self._STOP)
            self._thread.join()
        except BaseException:
            self._abandon.set()  # the worker drains without writing: the queue empties
            sent = False  # (a second stop mark, if the first got in, is never read)
            while self._thread.is_alive():
                if not sent:
                    try:
                        self._queue.put(self._STOP, timeout=0.1)
                        sent = True
                    except queue.Full:
                        continue
                self._thread.join(0.1)
            raise

    def __enter__(self) -> ThreadedSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def _raise_error(self) -> None:
        if self._error is None:
            return
        if not self._reported:
            self._reported = True
            raise self._error
        raise RuntimeError("ThreadedSink: the writer failed earlier (the first error was raised already)") from self._error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is not None or self._abandon.is_set():
                continue  # drain: a failed or abandoned writer drops the rest
            try:
                self.inner.write(*item)
            except BaseException as exc:  # re-raised in the caller
                self._error = exc
