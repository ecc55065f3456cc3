"""Ray options that must fail fast (review of issue 15), tested without starting Ray.

* `--ray-address` where nothing answers: an error within seconds naming the address (Ray's own
  `ray.init` retries an unreachable head for minutes); `ray.init` is never called.
* More `--workers` than the local cluster has CPUs/GPUs: an error at once (the extra actors
  would never start and the run would wait `START_TIMEOUT`, 15 minutes, before failing).
"""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

import seedvr2.distributed.ray_run as ray_run
from seedvr2.distributed import ModelSpec
from seedvr2.pipeline import UpscaleInputError


class FakeRay(SimpleNamespace):
    """Just enough of `ray` for `_connect` and `RayWorkers.__init__` up to the actors."""

    def __init__(self, resources):
        super().__init__(inits=[], resources=resources)

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.inits.append(kwargs)

    def cluster_resources(self):
        return self.resources

    def remote(self, cls):
        raise AssertionError("no actor may be created")

    def kill(self, actor):
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("prefix", ["", "ray://"])
def test_an_address_where_nothing_answers_fails_fast(monkeypatch, prefix):
    fake = FakeRay({"CPU": 2.0})
    monkeypatch.setattr(ray_run, "_ray", lambda: fake)
    address = f"{prefix}127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(UpscaleInputError, match=f"--ray-address {address}: nothing answers there"):
        ray_run._connect(address, None)
    assert time.perf_counter() - started < 3 and fake.inits == []


def test_an_address_that_answers_goes_to_ray(monkeypatch):
    fake = FakeRay({"CPU": 2.0})
    monkeypatch.setattr(ray_run, "_ray", lambda: fake)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert ray_run._connect(f"127.0.0.1:{server.getsockname()[1]}", None) is True
    assert len(fake.inits) == 1


@pytest.mark.parametrize("resources,workers,device,expected", [
    ({"CPU": 16.0, "GPU": 2.0}, 3, None, "--workers 3: each worker needs one GPU and this machine's Ray cluster has 2"),
    ({"CPU": 4.0, "GPU": 2.0}, 5, "cpu", "--workers 5: each worker needs one CPU and this machine's Ray cluster has 4"),
])
def test_more_local_workers_than_the_machine_has_fail_at_once(monkeypatch, tmp_path, resources, workers, device,
                                                              expected):
    fake = FakeRay(resources)
    monkeypatch.setattr(ray_run, "_ray", lambda: fake)
    monkeypatch.setattr(ray_run, "_connect", lambda address, workers: True)  # a local cluster we started
    spec = ModelSpec("dit.safetensors", "vae.safetensors", str(tmp_path))
    with pytest.raises(UpscaleInputError, match=expected):
        ray_run.RayWorkers(spec, workers, device=device)
