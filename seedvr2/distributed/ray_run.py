"""`upscale_on_ray`: the batches of one upscale run on Ray workers, joined in order by the driver.

Design (Ray is the scheduler and transport; nothing here is a home-made cluster):

* Each worker is a Ray actor (`BatchWorker`) that loads the models once from a `ModelSpec` for
  its own device (one GPU per actor when the cluster has GPUs, with its own block-swap / auto
  memory plan; a CPU actor otherwise) and runs whole batches: encode -> DiT -> decode -> colour
  fix, through exactly the single-process steps (`pipeline.run.BatchSteps`), returning the
  batch's output before the crossfade (`stream.BatchOutput`) and, for a resume store, its x0.
* The driver reads the input lazily, in batch order, and keeps at most `DEPTH` batches queued
  per worker (the next batch's frames travel while the current one computes). Results come
  back in any order; the `Joiner` crossfades them with the single-process `Crossfade` and
  writes frames in order, so the output equals `seedvr2.upscale`'s (bitwise on CPU, with equal
  torch thread counts in the driver and the workers: the driver's count is given to each actor).
* Faults: a worker that dies (killed process, lost machine) fails its queued batches with
  `RayActorError`; the driver drops that worker and queues those batches again, first, for the
  workers left. A batch is a pure function of its frames, settings and per-batch noise, so the
  re-run gives the same result. Only when no worker is left (or one batch has failed on
  `MAX_ATTEMPTS` workers) does the run stop, with `WorkersLostError` saying so.
* Fail fast: a `--ray-address` `host:port` where nothing answers is an error within
  CONNECT_TIMEOUT (Ray's `init` retries for minutes); asking a local cluster for more workers
  than it has GPUs (or CPUs) is an error before any actor starts (they would wait START_TIMEOUT).
* `resume`: the driver stores every x0 a worker returns; batches already stored are sent with
  their x0, so the worker only decodes them.

Host memory of the driver: the input frames and outputs of the batches in flight (workers x
DEPTH) plus outputs waiting for an earlier batch; a stalled early batch stops new submissions
once `workers x DEPTH` batches are unjoined, so this stays bounded whatever the length.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..batching import Batch, plan_batches
from ..pipeline import TensorSink, UpscaleInputError, UpscaleSettings, check_host_memory, host_memory_needed
from ..pipeline.run import ProgressFn, _check_sink, bind_store, latent_shape, make_steps, validate_source, wxh
from ..pipeline.store import ResumeStore
from ..pipeline.stream import BatchOutput, FrameSource, Joiner, as_source
from .spec import ModelSpec

log = logging.getLogger("seedvr2")

RAY_HINT = 'distributed runs (--workers, --ray-address) need Ray: pip install ".[ray]" (or pip install "ray>=2.9")'


class WorkersLostError(RuntimeError):
    """Every Ray worker of a run died; the message says how many there were and the last error."""

DEPTH = 2          # batches queued per worker
MAX_ATTEMPTS = 3   # workers a batch may fail on before the run gives up
START_TIMEOUT = 900.0  # seconds for the workers to start and load the models (a 7B from a slow disk)
REPO_ROOT = Path(__file__).resolve().parents[2]  # holds the `seedvr2` and `blockswap` packages


def _ray():
    try:
        import ray
    except ImportError:
        raise UpscaleInputError(RAY_HINT) from None
    return ray


@dataclass
class RayRunStats:
    """What a distributed run did (filled in as it goes; pass one to `upscale_on_ray(stats=...)`).

    computed: batches that ran encode + DiT on a worker (the others came from the resume store).
    retried: batches queued again after their worker died. workers_lost: workers that died.
    worker_pids: the actors' process ids (tests kill them). bytes_to_workers/bytes_from_workers:
    tensor payload bytes sent per batch (input frames, stored x0) and received (output, and the
    x0 when a resume store keeps it).
    """

    computed: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    workers_lost: int = 0
    worker_pids: list[int] = field(default_factory=list)
    bytes_to_workers: list[int] = field(default_factory=list)
    bytes_from_workers: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    """What a worker needs to know about a run besides the batch: settings, frame shape, output dtype."""

    settings: UpscaleSettings
    shape: tuple[int, int, int, int]
    output_dtype: torch.dtype


class BatchWorker:
    """One Ray actor: the models, loaded once for its device, and the steps of the current run."""

    def __init__(self, spec: ModelSpec, device: str | None, threads: int):
        torch.set_num_threads(threads)  # the driver's count: the same kernels, so the same bits
        ray = _ray()
        if device is None:
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.device = torch.device(device)
        self.models, self.dit = spec.load(self.device)
        self._job: Job | None = None
        self._steps = None

    def pid(self) -> int:
        return os.getpid()

    def process(self, job: Job, batch: Batch, frames: torch.Tensor, x0: torch.Tensor | None,
                return_x0: bool = True) -> tuple[torch.Tensor | None, BatchOutput]:
        """One batch: (its x0 if `return_x0` (for the resume store), its output before the
        crossfade). With `x0` given, only the decode runs."""
        if job != self._job:  # a new run: its geometry and memory plan (block swap, VAE tiles) for this device
            geometry = validate_source(_ShapeOnly(job.shape), job.settings)
            self._steps = make_steps(self.models, job.settings, job.shape, geometry, job.output_dtype)
            self._job = job
        found: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            outputs = list(self._steps.run([batch], lambda b: frames, x0={batch.index: x0} if x0 is not None else None,
                                           on_x0=lambda b, x: found.__setitem__(b.index, x)))
        if not return_x0:
            return None, outputs[0]
        return (x0 if x0 is not None else found[batch.index]), outputs[0]


class RayWorkers:
    """Ray actors with the models loaded, for one run or many (a catalogue of clips loads the models once).

    workers: how many (None: one per GPU of the cluster, or 1 without GPUs). address: join that
    cluster; None: this process's Ray session, or a local cluster started here (stopped by
    `close()`). device: "cpu" for CPU workers even with GPUs, "cuda" to require GPUs, None: GPUs
    when the cluster has them (one per worker). start_timeout: seconds the workers may take to
    start and load the models before the run gives up. `alive`: the workers not lost so far.
    Use as a context manager, or call `close()`.
    """

    def __init__(self, spec: ModelSpec, workers: int | None = None, *, address: str | None = None,
                 device: str | None = None, start_timeout: float = START_TIMEOUT):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise UpscaleInputError(f"workers must be a number of Ray workers >= 1 (or None: one per GPU), got {workers!r}")
        ray = _ray()
        self._ours = _connect(address, workers)
        self.actors: list = []
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            self.gpu = device != "cpu" and gpus > 0
            if device is not None and device.startswith("cuda") and not self.gpu:
                raise UpscaleInputError(f"--device {device}: the Ray cluster has no GPUs; use --device cpu")
            count = workers or max(1, gpus if self.gpu else 1)
            kind = "GPU" if self.gpu else "CPU"
            have = ray.cluster_resources().get(kind, 0)
            if self._ours and address is None and count > have:  # a local cluster never grows: the extra workers would never start
                raise UpscaleInputError(
                    f"--workers {count}: each worker needs one {kind} and this machine's Ray cluster has {have:g}; "
                    f"use --workers {int(have)} or fewer")
            remote = ray.remote(BatchWorker).options(num_gpus=1 if self.gpu else 0, num_cpus=0 if self.gpu else 1,
                                                     max_restarts=0, max_task_retries=0)
            self.actors = [remote.remote(spec, None if self.gpu else "cpu", torch.get_num_threads())
                           for _ in range(count)]
            try:
                self.pids = ray.get([a.pid.remote() for a in self.actors], timeout=start_timeout)
            except ray.exceptions.GetTimeoutError:
                free = ray.available_resources()
                raise WorkersLostError(
                    f"{count} Ray worker(s) did not start within {start_timeout:.0f} s; each needs "
                    f"{'1 GPU' if self.gpu else '1 CPU'} and the cluster has {free.get('GPU' if self.gpu else 'CPU', 0):g} "
                    "free (other workers hold the rest?). Use fewer --workers or a larger cluster") from None
            except ray.exceptions.RayActorError as exc:
                raise WorkersLostError(f"a Ray worker failed to start (loading the models): {exc}") from None
        except BaseException:
            self.close()
            raise
        self.alive = list(self.actors)

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.actors, self.alive = [], []
        if self._ours and ray.is_initialized():
            ray.shutdown()
        self._ours = False

    def __enter__(self) -> "RayWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ShapeOnly:
    """Stands in for the source in a worker: the shape plans the geometry; one frame is checked."""

    dtype = torch.uint8

    def __init__(self, shape):
        self.shape = tuple(shape)

    def read(self, start, stop):
        return torch.zeros((stop - start, *self.shape[1:]), dtype=torch.uint8)


def init_local_ray(num_cpus: int | None = None, num_gpus: int | None = None, **kwargs) -> None:
    """Start a local Ray cluster whose workers import this checkout's `seedvr2` (no dashboard)."""
    ray = _ray()
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"env_vars": {"PYTHONPATH": path}}
    # address="local": always a new cluster, never one that a stale `ray start` (or RAY_ADDRESS) names
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=env,
             logging_level=logging.WARNING, **kwargs)


def _connect(address: str | None, workers: int | None) -> bool:
    """Use the running Ray session, join `address`, or start a local cluster; True if we started it."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address is not None:
        from ..loaders import blockswap  # the engine package seedvr2 uses, shipped beside it

        modules = [str(Path(__file__).resolve().parents[1]), str(Path(blockswap.__file__).resolve().parent)]
        _check_reachable(address)
        try:
            ray.init(address=address, runtime_env={"py_modules": modules}, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise UpscaleInputError(
                f"--ray-address {address}: cannot join the Ray cluster ({exc}). Check the address (`ray status` on "
                "the head node shows it) and that this machine may join (Ray's token authentication: the "
                "cluster's token must be configured here too)") from None
        return True
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = os.cpu_count() or 1
    init_local_ray(num_cpus=max(cpus, workers or 1) if not gpus else cpus, num_gpus=gpus)
    return True


CONNECT_TIMEOUT = 10.0  # seconds to reach --ray-address before Ray's own (minutes-long) retries


def _check_reachable(address: str) -> None:
    """A `host:port` (or `ray://host:port`) that nothing answers on is an error within seconds:
    `ray.init` itself retries an unreachable head for minutes. Other forms ("auto", ...) are
    left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise UpscaleInputError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}). Check the address "
            "(`ray status` on the head node shows it) and that the head node is running and reachable") from None


def upscale_on_ray(
    frames: torch.Tensor | FrameSource,
    spec: ModelSpec,
    settings: UpscaleSettings,
    *,
    sink=None,
    output_dtype: torch.dtype = torch.float32,
    workers: int | RayWorkers | None = None,
    address: str | None = None,
    device: str | None = None,
    resume: ResumeStore | None = None,
    progress: ProgressFn | None = None,
    stats: RayRunStats | None = None,
) -> torch.Tensor | None:
    """`seedvr2.upscale` on Ray workers: same frames in, same frames out (see the module docstring).

    spec: the model files each worker loads. workers: a `RayWorkers` pool to use (kept open), or
    how many workers to start for this run (None: one per GPU, or 1); address/device: as for
    `RayWorkers`. sink/output_dtype/resume/progress: as for `upscale` (progress phase "batch":
    batches written). stats: a `RayRunStats` to fill. Raises `WorkersLostError` when no worker
    is left.
    """
    ray = _ray()
    started = time.perf_counter()
    stats = stats if stats is not None else RayRunStats()
    source = as_source(frames)
    geometry = validate_source(source, settings)
    num_frames, _, _, channels = source.shape
    _check_sink(sink, num_frames, geometry, channels)
    # the driver holds the output (a TensorSink) and a few batches; latents and canvases live on the workers
    estimate = host_memory_needed(num_frames, channels, geometry, settings,
                                  output_dtype=output_dtype if sink is None else None, canvas_on_host=False)
    check_host_memory(dataclasses.replace(estimate, latents=0), geometry, settings, num_frames)
    out = TensorSink(num_frames, *geometry.output_hw, channels, output_dtype) if sink is None else sink
    batches = plan_batches(num_frames, settings.batch_size, settings.temporal_overlap)
    store = bind_store(resume, source, settings, spec.vae_tiling) if resume is not None else None
    report = progress or (lambda phase, done, total: None)
    pool = workers if isinstance(workers, RayWorkers) else RayWorkers(spec, workers, address=address, device=device)
    try:
        if not pool.alive:
            raise WorkersLostError("no Ray worker is left in this pool; start a new RayWorkers")
        stats.worker_pids = list(pool.pids)
        log.info("SeedVR2 on Ray: %d %s worker(s), %d frames %s -> %s, %d batch(es)", len(pool.alive),
                 "GPU" if pool.gpu else "CPU", num_frames, wxh(geometry.input_hw), wxh(geometry.output_hw),
                 len(batches))
        job = Job(settings, tuple(source.shape), out.dtype)
        _drive(ray, ray.exceptions.RayActorError, pool, job, batches, source, geometry, store, Joiner(batches, out), report, stats)
    finally:
        if pool is not workers:
            pool.close()
        stats.seconds = time.perf_counter() - started
    return out.result() if sink is None else None


def _drive(ray, actor_error, pool, job, batches, source, geometry, store, joiner, report, stats) -> None:
    """Submit batches to workers with free queue slots, join results as they come, re-queue lost ones."""
    total = len(batches)
    pending: deque[Batch] = deque(batches)
    frames: dict[int, torch.Tensor] = {}          # input frames of batches not yet joined (re-runs need them)
    in_flight: dict = {}                          # ObjectRef -> (actor, batch, x0 came from the store)
    alive = pool.alive                            # shared with the pool: a lost worker stays lost
    count = len(alive)
    load = {id(a): 0 for a in alive}
    attempts: dict[int, int] = {}
    last_error = None
    report("batch", 0, total)
    while joiner.next_index < total:
        while pending:
            actor = min(alive, key=lambda a: load[id(a)])
            if load[id(actor)] >= DEPTH:
                break  # every worker has its queue full
            if pending[0].index not in frames and len(frames) >= DEPTH * len(alive):
                break  # as many batches unjoined as queue slots: wait for the earliest (bounds host memory)
            batch = pending.popleft()
            if batch.index not in frames:
                frames[batch.index] = source.read(batch.start, batch.stop)
            x0 = store.load(batch.index, latent_shape(batch, geometry)) if store is not None else None
            ref = actor.process.remote(job, batch, frames[batch.index], x0, store is not None and x0 is None)
            in_flight[ref] = (actor, batch, x0 is not None)
            load[id(actor)] += 1
            stats.bytes_to_workers.append(_nbytes(frames[batch.index]) + (_nbytes(x0) if x0 is not None else 0))
        if not in_flight:
            raise WorkersLostError(f"all {count} Ray worker(s) died; the run stopped at batch "
                                   f"{joiner.next_index + 1} of {total}. Last error: {last_error}")
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        actor, batch, from_store = in_flight.pop(ref)
        load[id(actor)] -= 1
        try:
            x0, output = ray.get(ref)
        except actor_error as exc:
            last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if actor in alive:
                alive.remove(actor)
                stats.workers_lost += 1
                log.warning("SeedVR2: a Ray worker died (%s); its batches run on the %d worker(s) left",
                            last_error, len(alive))
            attempts[batch.index] = attempts.get(batch.index, 0) + 1
            if attempts[batch.index] >= MAX_ATTEMPTS:
                raise WorkersLostError(f"batch {batch.index + 1} (frames {batch.start}..{batch.stop - 1}) failed on "
                                       f"{MAX_ATTEMPTS} workers; last error: {last_error}") from None
            stats.retried.append(batch.index)
            pending.appendleft(batch)
            if not alive:
                raise WorkersLostError(f"all {count} Ray worker(s) died; the run stopped at batch "
                                       f"{joiner.next_index + 1} of {total}. Last error: {last_error}") from None
            continue
        stats.bytes_from_workers.append(output.nbytes() + (_nbytes(x0) if x0 is not None else 0))
        if not from_store:
            stats.computed.append(batch.index)
            if store is not None:
                store.save(batch.index, x0, (batch.start, batch.stop))
        joiner.add(output)
        for index in [i for i in frames if i < joiner.next_index]:
            del frames[index]
        report("batch", joiner.next_index, total)
    joiner.finish()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
