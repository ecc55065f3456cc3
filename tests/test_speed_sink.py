"""ThreadedSink: writing overlaps the caller, in order, bounded, errors surface in the caller."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from seedvr2.pipeline.output import TensorSink, ThreadedSink


class SlowSink:
    dtype = torch.uint8

    def __init__(self, delay: float = 0.0, fail_at: int | None = None, gate: threading.Event | None = None):
        self.delay, self.fail_at, self.gate = delay, fail_at, gate
        self.writes: list[tuple[int, torch.Tensor, str]] = []

    def write(self, start: int, frames: torch.Tensor) -> None:
        if self.gate is not None:
            assert self.gate.wait(5)
        time.sleep(self.delay)
        if start == self.fail_at:
            raise OSError(f"disk full at frame {start}")
        self.writes.append((start, frames, threading.current_thread().name))


def _frames(start: int, n: int = 2) -> torch.Tensor:
    return torch.full((n, 4, 4, 3), start, dtype=torch.uint8)


def test_writes_overlap_the_caller_and_arrive_in_order():
    inner = SlowSink(delay=0.2)
    sink = ThreadedSink(inner, depth=4)
    t0 = time.perf_counter()
    for start in range(0, 8, 2):
        sink.write(start, _frames(start))
    queued = time.perf_counter() - t0
    sink.close()
    total = time.perf_counter() - t0
    assert queued < 0.2 < 0.75 < total  # the caller went on while 4 x 0.2 s of writing happened
    assert [s for s, _, _ in inner.writes] == [0, 2, 4, 6]
    assert all(torch.equal(f, _frames(s)) for s, f, _ in inner.writes)
    assert {name for _, _, name in inner.writes} == {"seedvr2-writer"}


def test_the_queue_is_bounded():
    gate = threading.Event()
    sink = ThreadedSink(SlowSink(gate=gate), depth=1)
    sink.write(0, _frames(0))  # taken by the worker, which waits at the gate
    time.sleep(0.05)
    sink.write(2, _frames(2))  # fills the queue
    blocked = threading.Thread(target=sink.write, args=(4, _frames(4)))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # a third batch waits: at most depth + 1 batches in flight
    gate.set()
    blocked.join(5)
    sink.close()
    assert [s for s, _, _ in sink.inner.writes] == [0, 2, 4]


def test_a_writer_error_is_raised_in_the_caller_without_deadlock():
    sink = ThreadedSink(SlowSink(fail_at=2), depth=1)
    with pytest.raises(OSError, match="disk full at frame 2"):
        for start in range(0, 40, 2):  # far more batches than the queue holds
            sink.write(start, _frames(start))
        sink.close()
    with pytest.raises(RuntimeError, match="failed earlier"):
        sink.close()
    assert [s for s, _, _ in sink.inner.writes] == [0]


def test_leaving_on_an_exception_drops_the_queue_and_stops_the_worker():
    gate = threading.Event()
    inner = SlowSink(gate=gate)
    with pytest.raises(KeyboardInterrupt):
        with ThreadedSink(inner, depth=4) as sink:
            for start in range(0, 8, 2):
                sink.write(start, _frames(start))
            threading.Timer(0.1, gate.set).start()
            raise KeyboardInterrupt
    assert not sink._thread.is_alive()
    assert [s for s, _, _ in inner.writes] in ([], [0])  # at most the batch already being written


def test_wraps_a_tensor_sink_and_refuses_non_sinks():
    inner = TensorSink(4, 4, 4, 3, torch.uint8)
    with ThreadedSink(inner) as sink:
        assert sink.dtype == torch.uint8
        sink.write(0, _frames(0))
        sink.write(2, _frames(2))
    assert torch.equal(inner.result()[2:], _frames(2))
    with pytest.raises(ValueError, match="ThreadedSink needs a sink"):
        ThreadedSink(object())
