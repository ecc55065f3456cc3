"""Batches on Ray workers (a local cluster of 2 CPU workers, tiny models): the same output as one process.

Slow by nature (about a minute in all on a 2-core box): Ray starts in ~15 s and each worker
process imports torch and loads the models (~10 s); so Ray starts once for the module (2 CPUs)
and one pool of 2 workers serves every test after the CLI's (which starts its own workers, so
it runs first, while the CPUs are free); the two fault tests come last, in order: the first
kills one worker, the second the one left.

Bitwise equality holds because every batch runs the single-process steps with the same torch
thread count as the driver (the driver's count is given to each actor; the suite runs with 1)
and the driver joins results through the same crossfade. A killed worker's batches run again
on the worker left; resume sends stored batches for decode only.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from seedvr2.distributed import ModelSpec, WorkersLostError
from seedvr2.pipeline import UpscaleSettings, VAETiling, upscale
from seedvr2.pipeline.store import ResumeStore
from tiny_models import DIT_FILE, VAE_FILE, write_tiny_models

ray = pytest.importorskip("ray", reason='Ray (`pip install ".[ray]"`) runs the distributed tests')

from seedvr2.distributed.ray_run import RayRunStats, RayWorkers, init_local_ray, upscale_on_ray  # noqa: E402

# 23 frames, batches of 5 sharing 2: 7 batches, the last one 2 frames long
SETTINGS = UpscaleSettings(resolution=16, batch_size=5, temporal_overlap=2, seed=7)
FRAMES = torch.randint(0, 256, (23, 10, 14, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray") / "models"
    write_tiny_models(folder)
    return ModelSpec(DIT_FILE, VAE_FILE, str(folder), vae_tiling=VAETiling(None, 64, 4), download=False)


@pytest.fixture(scope="module")
def cluster():
    init_local_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster, spec):
    with RayWorkers(spec, 2, device="cpu") as workers:
        yield workers


@pytest.fixture(scope="module")
def reference(spec):
    models, _ = spec.load("cpu")
    return upscale(FRAMES, models, SETTINGS, output_dtype=torch.uint8)


def test_cli_workers_option(cluster, spec, tmp_path, capsys):
    av = pytest.importorskip("av")
    from seedvr2.cli import main
    from test_stream import _decoded, write_video

    src = write_video(tmp_path / "clip.mp4", frames=11)
    common = ["--models-dir", spec.models_dir, "--dit", DIT_FILE, "--vae", VAE_FILE, "--no-download", "-q",
              "--resolution", "16", "--vae-tile-size", "0", "--temporal-overlap", "2"]
    assert main([str(src), "-o", str(tmp_path / "one.mp4"), "--device", "cpu", *common]) == 0, capsys.readouterr().err
    assert main([str(src), "-o", str(tmp_path / "two.mp4"), "--workers", "2", "--device", "cpu", *common]) == 0, \
        capsys.readouterr().err
    assert (_decoded(tmp_path / "one.mp4") == _decoded(tmp_path / "two.mp4")).all()
    del av


def test_two_workers_give_the_single_process_output(pool, spec, reference):
    stats = RayRunStats()
    out = upscale_on_ray(FRAMES, spec, SETTINGS, output_dtype=torch.uint8, workers=pool, stats=stats)
    assert torch.equal(out, reference)
    assert sorted(stats.computed) == list(range(7)) and len(set(stats.worker_pids)) == 2


def test_resume_on_workers_runs_only_the_missing_batches(pool, spec, reference, tmp_path):
    models, _ = spec.load("cpu")
    folder = tmp_path / "resume"

    class Stop(Exception):
        pass

    # a single-process run stopped after three batches were stored ...
    def stop(phase, done, total):
        if phase == "dit" and done == 3:
            raise Stop

    with pytest.raises(Stop):
        upscale(FRAMES, models, SETTINGS, output_dtype=torch.uint8, resume=ResumeStore(folder), progress=stop)
    assert len(list(folder.glob("batch_*"))) == 3
    # ... resumed on Ray workers (the store does not depend on where batches ran)
    stats = RayRunStats()
    out = upscale_on_ray(FRAMES, spec, SETTINGS, output_dtype=torch.uint8, workers=pool, resume=ResumeStore(folder),
                         stats=stats)
    assert sorted(stats.computed) == [3, 4, 5, 6]
    assert torch.equal(out, reference)
    assert len(list(folder.glob("batch_*"))) == 7


def test_a_killed_worker_has_its_batches_run_elsewhere(pool, spec, reference):
    stats = RayRunStats()

    killed = []

    def kill_one(phase, done, total):
        if done >= 1 and not killed:  # a batch is written; both workers still have batches queued
            killed.append(os.kill(stats.worker_pids[0], signal.SIGKILL))

    out = upscale_on_ray(FRAMES, spec, SETTINGS, output_dtype=torch.uint8, workers=pool, stats=stats,
                         progress=kill_one)
    assert stats.workers_lost == 1 and stats.retried  # its queued batch(es) ran again on the other worker
    assert len(pool.alive) == 1
    assert torch.equal(out, reference)


def test_the_run_stops_clearly_when_no_worker_is_left(pool, spec):
    assert len(pool.alive) == 1, "runs after test_a_killed_worker_has_its_batches_run_elsewhere"
    stats = RayRunStats()
    killed = []

    def kill_the_last(phase, done, total):
        if done >= 1 and not killed:
            killed.extend(os.kill(pid, signal.SIGKILL) for pid in stats.worker_pids[1:])

    with pytest.raises(WorkersLostError, match=r"all 1 Ray worker\(s\) died; the run stopped at batch \d of 7"):
        upscale_on_ray(FRAMES, spec, SETTINGS, output_dtype=torch.uint8, workers=pool, stats=stats,
                       progress=kill_the_last)
    with pytest.raises(WorkersLostError, match="no Ray worker is left"):
        upscale_on_ray(FRAMES, spec, SETTINGS, workers=pool)
