"""Block swap on a real CUDA GPU, in one go: the checks a CPU machine cannot do (issue 9).

    python bench/gpu_check.py                      # everything, ~8 min on an H200 (+ ~3 min for e2e)
    python bench/gpu_check.py --quick              # a ~3 min subset (CUDA block-swap tests, 3B bench, e2e at 24 GB)
    python bench/gpu_check.py --only e2e e2e-baseline e2e-native   # the end-to-end checks alone (~6 min)
    python bench/gpu_check.py --json gpu.json      # also write the results as JSON
    python bench/gpu_check.py --dit /models/seedvr2_ema_3b_fp16.safetensors   # a real 3B instead of random
    python bench/gpu_check.py --cpu-smoke          # no GPU: checks (b), (g) and (h)'s code on tiny models, CPU

Checks (each one PASS/FAIL with its figures; one summary table at the end; exit status 1 if any failed):

  a. cuda-tests   the unit tests that need CUDA (`pytest tests -k cuda`: tests/test_blockswap_cuda.py,
                  the VAE and loader CUDA tests, `vae_compile` against eager included), in a subprocess;
                  none may fail.
  b. 3b-inference a full-size 3B DiT with random bf16 weights written as a checkpoint, loaded by
                  `load_dit_model` with 16 of 32 blocks swapped, all inside `torch.inference_mode()`
                  as ComfyUI runs nodes: two DiT forwards at a small token count and one small
                  `seedvr2.upscale` (random-weight VAE of the released config) equal, bit for bit,
                  the same model resident on the GPU.
  c. fresh-slot   the first use of fresh ring slots: the resident block right before the first swapped
                  one leaves slow kernels (`torch.cuda._sleep`) writing large temporaries that it has
                  already freed, so the caching allocator hands that memory to the ring slots; an
                  unfenced first copy into a slot is overwritten and the output differs. Three runs
                  (`offload()` between: fresh slots each time) must equal the resident output.
  d. pin-refused  every `cudaHostRegister` the engine makes is refused by the driver (invalid flags),
                  which leaves CUDA's last error set; the next kernel launch and the swapped forward
                  must not raise and must equal the resident output.
  e. peak-memory  peak `torch.cuda.max_memory_allocated` over two forwards of a 3B-shaped stack with
                  24/32 blocks swapped <= IO + residents + K x largest block + activations (the
                  activations measured on the resident model) + 1 % slack.
  f. bench        `bench/blockswap_bench.py`'s standard CUDA table (3B and 7B shapes, 4k and 16k tokens,
                  resident / seed-style / K=1,2,3); --quick: 3B, 4k tokens, K=2.
  g. e2e          `bench/e2e.py`: the paper case (3B, 768x1344 output, batch 21) cut to one batch of 21
                  frames, resident and streamed to fit 24 and 12 GB, plus `--check` (fast paths vs eager
                  at 24 GB: max |diff| <= E2E_CHECK_TOLERANCE); outputs finite. --quick: 24 GB only,
                  no check. The whole table (100 frames, 7B 1080p) is one command, see README.
  h. e2e-baseline the cut paper case streamed to fit 24 GB, ours and then this project's main before the
                  speed work (`bench/e2e.py --baseline`, revision `e2e.BASELINE_REV` from $SEEDVR2_BASELINE_TREE,
                  the device kit or git): outputs within E2E_CHECK_TOLERANCE; baseline/ours per phase,
                  reported against the issue's 2x goal. Not in --quick.
  i. e2e-native   `bench/e2e_native.py` on the same cut paper case, resident: ours vs ComfyUI 0.33.0's
                  native SeedVR2 (per-phase ratio, peak VRAM). Needs a ComfyUI 0.33.0 tree and a Python
                  that imports it (SEEDVR2_COMFYUI_DIR + SEEDVR2_COMFYUI_PYTHON, or the acceptance
                  suite's cached set-up; on a bare device machine `bench/device_run.sh` sets both from
                  the kit `bench/device_kit.py` builds); SKIP with the reason otherwise. Not in --quick.

Without CUDA it says so and exits 0 (JSON: {"skipped": reason}). Nothing here runs at import.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (ROOT, BENCH):  # run from anywhere: the repo's packages and the sibling bench modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from blockswap import BlockSwapConfig, apply_block_swap  # noqa: E402

GiB = float(1 << 30)
MiB = float(1 << 20)


class CheckFailed(AssertionError):
    """A check's property does not hold (the message says what was measured)."""


class CheckSkipped(Exception):
    """A check cannot run here (the message says why); neither a pass nor a failure."""


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL, SKIP
    seconds: float
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


def run_check(name: str, fn: Callable[[], tuple[str, dict[str, Any]]], results: list[Result]) -> None:
    """Run one check; a failure (or crash) is recorded and the next check still runs."""
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        summary, figures = fn()
        results.append(Result(name, "PASS", time.perf_counter() - t0, summary, figures))
    except CheckSkipped as exc:
        results.append(Result(name, "SKIP", time.perf_counter() - t0, str(exc)[:160]))
    except CheckFailed as exc:
        results.append(Result(name, "FAIL", time.perf_counter() - t0, str(exc).splitlines()[0][:160],
                              detail=str(exc)))
    except Exception as exc:  # noqa: BLE001  (a crash is a failed check; the others still run)
        results.append(Result(name, "FAIL", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:160],
                              detail=traceback.format_exc()))
    finally:
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    last = results[-1]
    print(f"--> {last.status} in {last.seconds:.1f}s: {last.summary}", flush=True)
    if last.detail:
        print(last.detail[-4000:], flush=True)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")


# ------------------------------------------------------------------------------------------------
# (a) the CUDA unit tests

def check_cuda_tests(quick: bool) -> tuple[str, dict]:
    selection = ["tests/test_blockswap_cuda.py"] if quick else ["tests", "-k", "cuda"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *selection]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    tail = (proc.stdout + proc.stderr)[-6000:]
    print(tail, flush=True)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", tail)}
    skips = [line for line in tail.splitlines() if line.startswith("SKIPPED")]
    figures = {"returncode": proc.returncode, **counts, "skip_reasons": skips[:20]}
    expect(proc.returncode == 0 and counts.get("passed", 0) > 0,
           f"pytest exit {proc.returncode}: {counts}\n{tail}")
    return f"{counts.get('passed', 0)} passed, {counts.get('skipped', 0)} skipped", figures


# ------------------------------------------------------------------------------------------------
# (b) a full-size 3B under torch.inference_mode(), through the loaders, swapped == resident

@dataclass(frozen=True)
class InferenceCase:
    """What check (b) runs: a DiT file in `folder` (with pos_emb.pt beside it), a VAE factory,
    how many blocks to swap, the DiT's latent grid and the upscale's input."""

    folder: Path
    dit_name: str
    make_vae: Callable[[torch.dtype], nn.Module]
    blocks_to_swap: int
    grid: tuple[int, int, int]  # latent (t, h, w) of the direct DiT forwards
    frames: tuple[int, int, int]  # upscale input (T, H, W)
    resolution: int


def write_random_3b(folder: Path, txt_tokens: int = 58) -> str:
    from dit_load import write_random_checkpoint  # bench/dit_load.py: streamed random fp16, official keys

    name = "seedvr2_3b_random_fp16.safetensors"
    t0 = time.perf_counter()
    size = write_random_checkpoint(folder / name, "3b")
    torch.save(torch.randn(txt_tokens, 5120, generator=torch.Generator().manual_seed(1)), folder / "pos_emb.pt")
    print(f"wrote a random 3B checkpoint ({size / GiB:.2f} GiB) in {time.perf_counter() - t0:.0f}s", flush=True)
    return name


def released_vae(dtype: torch.dtype) -> nn.Module:
    """The released VAE's architecture with random weights (PyTorch's default init: outputs stay finite)."""
    from e2e import random_vae

    return random_vae("default", dtype)


def check_inference_mode_swap(case: InferenceCase, device: torch.device) -> tuple[str, dict]:
    from seedvr2.loaders import LoadedVAE, compute_dtype, load_dit_model, upscale_models
    from seedvr2.pipeline import UpscaleModels, UpscaleSettings, VAETiling, upscale
    from seedvr2.placement import ModulePlacement

    config = BlockSwapConfig(blocks_to_swap=case.blocks_to_swap, prefetch_blocks=2)
    dtype = compute_dtype("auto", device)
    gen = torch.Generator().manual_seed(0)
    t, h, w = case.grid
    settings = UpscaleSettings(resolution=case.resolution, batch_size=case.frames[0], seed=5)
    frames = torch.rand(*case.frames, 3, generator=gen)
    with torch.inference_mode():  # everything the host does: load, apply, run
        t0 = time.perf_counter()
        dit = load_dit_model(case.dit_name, case.folder, device=device, block_swap=config, download=False,
                             cpu_block_swap=True)
        load_s = time.perf_counter() - t0
        vae = LoadedVAE(case.make_vae(dtype), case.folder / "random_vae", VAETiling())
        inference_tensors = [n for n, p in dit.module.named_parameters() if p.is_inference()]
        expect(not inference_tensors, f"the loader made inference-mode parameters: {inference_tensors[:3]}")
        handle = dit.block_swap
        expect(handle is not None and handle.stats().active, f"block swap is not active: {handle}")
        pos = dit.pos_emb.to(device, torch.float32)
        vid = torch.randn(t * h * w, 33, generator=gen).to(device)
        args = (vid, pos, torch.tensor([[t, h, w]], device=device), torch.tensor([[pos.shape[0]]], device=device),
                torch.tensor([1000.0], device=device))
        swapped = [dit.module(*args).clone() for _ in range(2)]  # the second one runs on the wrapped-around ring
        handle.offload()
        swapped_up = upscale(frames, upscale_models(dit, vae), settings)
        stats = handle.stats()
    expect(stats.blocks_swapped == case.blocks_to_swap and stats.forwards >= 1, f"stats: {stats.summary()}")
    dit.release()  # handle removed: the module is plain again, every tensor on the host

    with torch.no_grad():
        dit.module.to(device)
    with torch.inference_mode():
        resident = [dit.module(*args) for _ in range(2)]
        models = UpscaleModels(dit.module, vae.module, dit.pos_emb, device, ModulePlacement(dit.module, device),
                               ModulePlacement(vae.module, device), vae.tiling)
        resident_up = upscale(frames, models, settings)
    dit.module.to("cpu")
    diffs = [max_diff(a, b) for a, b in zip(swapped, resident)]
    up_diff = max_diff(swapped_up, resident_up)
    figures = {"load_s": round(load_s, 1), "dit_tokens": t * h * w // 4, "dit_max_abs_diff": diffs,
               "upscale_max_abs_diff": up_diff, "upscale_shape": list(swapped_up.shape),
               "upscale_finite": bool(torch.isfinite(swapped_up).all()), "summary": stats.summary()}
    print(stats.summary(), flush=True)
    expect(all(torch.equal(a, b) for a, b in zip(swapped, resident)),
           f"swapped DiT output differs from resident under inference mode: max |diff| {diffs}")
    expect(torch.equal(swapped_up, resident_up), f"swapped upscale differs from resident: max |diff| {up_diff}")
    return (f"{stats.blocks_swapped}/{stats.blocks_total} swapped, DiT x2 and upscale "
            f"{tuple(swapped_up.shape)} bit-equal; load {load_s:.1f}s"), figures


# ------------------------------------------------------------------------------------------------
# (c) the fresh-slot race, (d) refused registrations: a stack of wide linear blocks

class LinearStack(nn.Module):
    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.out(x)


def linear_pair(width: int, blocks: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(resident reference on `device`, identical host copy to swap), bf16, random weights."""
    torch.manual_seed(7)
    with torch.device(device):
        ref = LinearStack(width, blocks).to(torch.bfloat16).eval().requires_grad_(False)
    host = copy.deepcopy(ref).to("cpu")
    return ref, host


def check_fresh_slot_race(device: torch.device, quick: bool) -> tuple[str, dict]:
    width, blocks, k = 4096, 8, 2  # 32 MiB blocks: a copy takes ~1 ms, the sleep ~50-100 ms
    ref, model = linear_pair(width, blocks, device)
    config = BlockSwapConfig(blocks_to_swap=blocks // 2, prefetch_blocks=k, placement="spread")
    first_swapped = config.swapped_indices(blocks)[0]
    before = model.blocks[first_swapped - 1] if first_swapped > 0 else model.inp
    slot_bytes = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in model.blocks)
    recycled: list[int] = []  # the temporaries' addresses in the current run

    def slow_temporaries(module: nn.Module, args: Any, output: Any) -> None:
        # Freed at once but written late: the allocator may hand this memory to the ring slots
        # while these fills still wait behind the sleep on the compute stream.
        temps = [torch.empty(slot_bytes + 4096, dtype=torch.uint8, device=device) for _ in range(k + 2)]
        recycled.extend(t.data_ptr() for t in temps)
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time
        for t in temps:
            t.fill_(0x5A)
        del temps

    x = torch.randn(512, width, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16)
    with torch.inference_mode():
        expected = ref(x)
    handle = apply_block_swap(model, config, device)
    hook = before.register_forward_hook(slow_temporaries)
    runs, equal, diffs, on_recycled = (2 if quick else 3), [], [], []
    try:
        with torch.inference_mode():
            for _ in range(runs):
                torch.cuda.synchronize()
                recycled.clear()
                out = model(x)
                torch.cuda.synchronize()
                equal.append(torch.equal(out, expected))
                diffs.append(max_diff(out, expected))
                on_recycled.append(_slots_on(handle, recycled, slot_bytes + 4096))
                handle.offload()  # slots dropped: the next forward takes fresh ones again
        stats = handle.stats()
    finally:
        hook.remove()
        handle.remove()
    figures = {"runs": runs, "equal": equal, "max_abs_diff": diffs, "first_swapped_block": first_swapped,
               "slot_mib": round(slot_bytes / MiB, 1), "slots_in_recycled_memory": on_recycled,
               "summary": stats.summary()}
    expect(all(equal), f"first use of fresh ring slots raced recycled memory: equal per run {equal}, max |diff| {diffs}")
    where = ("slots took the freed temporaries' memory" if any(on_recycled) else
             "slots did not land on the temporaries (allocated earlier: no race possible)"
             if on_recycled and all(v is False for v in on_recycled) else "slot addresses not inspectable")
    return f"{runs} runs with fresh slots after slow freed temporaries: all bit-equal ({where})", figures


def _slots_on(handle: Any, starts: list[int], size: int) -> bool | None:
    """Whether any ring slot of `handle` lies in one of the ranges [start, start + size) (engine
    internals, read only for the report; None when they are not there to read)."""
    try:
        slots = [b.data_ptr() for b in handle.ring.buffers]
    except AttributeError:
        return None
    if not slots:
        return None
    return any(start <= ptr < start + size for ptr in slots for start in starts)


def check_refused_pin(device: torch.device) -> tuple[str, dict]:
    cudart = torch.cuda.cudart()
    real = cudart.cudaHostRegister
    calls: list[int] = []

    def refusing_register(ptr: int, size: int, flags: int) -> Any:
        calls.append(size)
        return real(ptr, size, 0x7FFF0000)  # invalid flags: the driver refuses and sets the last error

    # Control: does a refusal surface at this torch's next kernel launch when nobody clears it?
    probe = torch.empty(1 << 20, dtype=torch.uint8)
    code = int(real(probe.data_ptr(), probe.numel(), 0x7FFF0000))
    control = "refusal code %d; " % code
    try:
        (torch.ones(4, device=device) * 2).sum().item()
        control += "the next kernel did not raise"
    except RuntimeError as exc:
        control += f"the next kernel raised ({str(exc).splitlines()[0][:80]})"
    print("control:", control, flush=True)

    ref, model = linear_pair(2048, 6, device)
    x = torch.randn(64, 2048, generator=torch.Generator().manual_seed(2)).to(device, torch.bfloat16)
    with torch.inference_mode():
        expected = ref(x)
    cudart.cudaHostRegister = refusing_register
    try:
        handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=6, pin_memory="auto"), device)
    finally:
        cudart.cudaHostRegister = real
    try:
        try:
            (torch.ones(4, device=device) + 1).sum().item()  # the first kernel after the refusals
            with torch.inference_mode():
                out = model(x)
            torch.cuda.synchronize()
        except RuntimeError as exc:
            raise CheckFailed(f"a kernel after a refused cudaHostRegister raised: {exc}") from None
        stats = handle.stats()
    finally:
        handle.remove()
    figures = {"register_calls": len(calls), "control": control, "copy_mode": stats.copy_mode,
               "pinned_bytes": stats.pinned_bytes, "equal": bool(torch.equal(out, expected))}
    expect(len(calls) > 0, "the engine never called cudaHostRegister (nothing was refused; check not exercised)")
    expect(stats.pinned_bytes == 0, f"refused registrations counted as pinned: {stats.pinned_bytes} bytes")
    expect(torch.equal(out, expected), f"output after refused pins differs: max |diff| {max_diff(out, expected)}")
    return f"{len(calls)} refused registrations, copy mode {stats.copy_mode!r}, kernels fine, output bit-equal", figures


# ------------------------------------------------------------------------------------------------
# (e) the peak-memory bound

def check_peak_memory(device: torch.device, quick: bool) -> tuple[str, dict]:
    import blockswap_bench as bb

    shape = bb.SHAPES["3b"]
    tokens, n_swap, k = (4096, 24, 2)
    model = bb.build(shape, torch.bfloat16, device)
    block_bytes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in model.blocks]
    io_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("blocks."))
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(tokens, 132, generator=g).to(device, torch.bfloat16),
              torch.randn(bb.TXT_TOKENS, 5120, generator=g).to(device, torch.bfloat16))

    def peak_over_forwards(runs: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            for _ in range(runs):
                model(*inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base

    with torch.no_grad():
        model.to(device)
    activations = peak_over_forwards(2)  # the resident model: weights are already counted in `base`
    with torch.no_grad():
        model.to("cpu")
    torch.cuda.empty_cache()

    config = BlockSwapConfig(blocks_to_swap=n_swap, prefetch_blocks=k, placement="spread")
    swapped = set(config.swapped_indices(shape.blocks))
    handle = apply_block_swap(model, config, device)
    try:
        peak = peak_over_forwards(2)
        stats = handle.stats()
    finally:
        handle.remove()
    residents = sum(b for i, b in enumerate(block_bytes) if i not in swapped)
    largest = max(block_bytes[i] for i in swapped)
    bound = io_bytes + residents + k * largest + activations
    slack = 0.01 * bound
    figures = {"peak_gib": round(peak / GiB, 3), "bound_gib": round(bound / GiB, 3),
               "io_gib": round(io_bytes / GiB, 3), "residents_gib": round(residents / GiB, 3),
               "k_x_largest_gib": round(k * largest / GiB, 3), "activations_gib": round(activations / GiB, 3),
               "engine_weights_peak_gib": round(stats.device_weight_bytes_peak / GiB, 3), "tokens": tokens,
               "swapped": f"{n_swap}/{shape.blocks}", "K": k}
    print(stats.summary(), flush=True)
    expect(peak <= bound + slack,
           f"peak {peak / GiB:.3f} GiB > bound {bound / GiB:.3f} GiB (IO {io_bytes / GiB:.3f} + residents "
           f"{residents / GiB:.3f} + K x largest {k * largest / GiB:.3f} + activations {activations / GiB:.3f})")
    return f"peak {peak / GiB:.2f} GiB <= bound {bound / GiB:.2f} GiB ({n_swap}/{shape.blocks} swapped, K={k})", figures


# ------------------------------------------------------------------------------------------------
# (f) the bench table

def check_bench(quick: bool) -> tuple[str, dict]:
    import blockswap_bench as bb

    argv = ["blockswap_bench.py", "--device", "cuda"]
    if quick:
        argv += ["--models", "3b", "--tokens", "4096", "--prefetch", "2", "--no-seed", "--runs", "3"]
    out = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            sys.__stdout__.write(text)
            return out.write(text)

        def flush(self) -> None:
            sys.__stdout__.flush()

    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(Tee()):
            bb.main()
    finally:
        sys.argv = saved
    text = out.getvalue()
    rows = len(re.findall(r"^\s+ours K=\d", text, re.MULTILINE))
    expect(rows > 0, "the bench printed no 'ours' rows")
    best = re.findall(r"best ours \((.*?)\) is ([\d.]+)x faster than seed-sync", text)
    return (f"{rows} block-swap rows" + (f"; best vs seed-sync: {', '.join(f'{b} {x}x' for b, x in best)}" if best
                                         else "")), {"args": argv[1:], "table": text}


# ------------------------------------------------------------------------------------------------
# (g) the end-to-end bench, (h) side by side with ComfyUI native

E2E_FRAMES = 21            # one batch of the paper case: ~8 min budget for the whole gpu_check
E2E_CHECK_TOLERANCE = 0.1  # max |diff| in 0..1 output between fast paths and eager; above: broken, not rounding


def check_e2e(device: torch.device, case_name: str, frames: int | None, budgets: list[str],
              check_budget: str | None) -> tuple[str, dict]:
    """`bench/e2e.py`'s runs of one case: each budget once (finite output of the case's size), and at
    `check_budget` also the eager variant, whose output must match within E2E_CHECK_TOLERANCE."""
    import e2e

    case = e2e.CASES[case_name] if frames is None else e2e.replace(e2e.CASES[case_name], frames=frames)
    models = e2e.build_models(e2e._model_specs()[case.model], device)
    rows, figures = [], {"case": e2e.asdict(case), "runs": []}
    for budget in budgets:
        record, out = e2e.run_upscale(models, case, device, budget, None, e2e.VARIANTS["fast"], 0.5, "wavelet")
        e2e.print_record(record)
        expect(bool(torch.isfinite(out).all()) and tuple(out.shape[1:3]) == case.output_hw,
               f"{budget}: output {tuple(out.shape)} not finite or not {case.output_hw}")
        figures["runs"].append(record)
        rows.append(f"{budget}: {record['total']['seconds']:.1f}s {record['total']['fps']:.2f} fps "
                    f"{e2e_gib(record['total']['peak_vram_bytes'])} GiB")
        if budget == check_budget:
            eager, out_eager = e2e.run_upscale(models, case, device, budget, None, e2e.VARIANTS["eager"], 0.5,
                                               "wavelet")
            e2e.print_record(eager)
            diff = max_diff(out, out_eager)
            figures["check"] = {"max_abs_diff": diff, "speedup": eager["total"]["seconds"] / record["total"]["seconds"],
                                "eager": eager}
            rows.append(f"check: max|diff| {diff:.3g}, fast {figures['check']['speedup']:.2f}x eager")
            expect(diff <= E2E_CHECK_TOLERANCE, f"fast paths differ from eager by {diff} > {E2E_CHECK_TOLERANCE}")
        del out
    return f"{case.name} case, {case.frames} frames: " + "; ".join(rows), figures


E2E_SPEEDUP_GOAL = 2.0        # issue 14: end to end >= 2x this project's main at the same settings and budget


def check_e2e_baseline(device: torch.device, case_name: str, frames: int | None, budget: str) -> tuple[str, dict]:
    """One case at `budget`, ours and then main before the speed work (`--baseline`): the outputs
    must agree within E2E_CHECK_TOLERANCE; baseline/ours is reported against the 2x goal."""
    import e2e

    spec = _baseline_spec()
    argv = ["--case", case_name, "--budgets", budget, "--baseline", spec]
    args = e2e.parse_args(argv + ([] if frames is None else ["--frames", str(frames)]))
    (case,) = e2e.resolve_cases(args)
    models = e2e.build_models(e2e._model_specs()[case.model], device)
    record, out = e2e.run_upscale(models, case, device, budget, None, e2e.VARIANTS["fast"], 0.5, "wavelet")
    del models
    with e2e.baseline_tree(spec) as tree:
        base = record["baseline"] = e2e.run_baseline(args, case, budget, device, tree, record, out)
    del out
    e2e.print_record(record)
    e2e.print_baseline(record)
    diff, total = base["max_abs_diff_vs_ours"], base["speedup"]["total"]
    expect(diff <= E2E_CHECK_TOLERANCE, f"ours and the baseline ({spec}) differ by {diff} > {E2E_CHECK_TOLERANCE}")
    goal = "met" if total >= E2E_SPEEDUP_GOAL else "NOT met"
    return (f"{budget} GB, baseline {spec}: baseline/ours " +
            ", ".join(f"{p} {v:.2f}x" for p, v in base["speedup"].items()) +
            f" (goal {E2E_SPEEDUP_GOAL:.0f}x {goal}); max|diff| {diff:.3g}"), {"ours": record}


def _baseline_spec() -> str:
    """Where main before the speed work is: $SEEDVR2_BASELINE_TREE, the device kit's copy
    (.devkit/baseline), or the git revision when this is a git checkout; SKIP otherwise."""
    import os

    for folder in (os.environ.get("SEEDVR2_BASELINE_TREE"), ROOT / ".devkit" / "baseline"):
        if folder and Path(folder, "seedvr2", "__init__.py").is_file():
            return str(folder)
    from e2e import BASELINE_REV

    if (ROOT / ".git").exists():
        return BASELINE_REV
    raise CheckSkipped(f"no baseline tree: set SEEDVR2_BASELINE_TREE to a folder holding seedvr2/ and blockswap/ of "
                       f"{BASELINE_REV} (git archive {BASELINE_REV} seedvr2 blockswap), or build the device kit")


def check_e2e_native(tmp: Path) -> tuple[str, dict]:
    tree, python = _native_host()
    out = tmp / "e2e_native.json"
    cmd = [str(python), str(BENCH / "e2e_native.py"), "--comfyui", str(tree), "--case", "paper", "--frames",
           str(E2E_FRAMES), "--budgets", "resident", "--json", str(out)]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    print((proc.stdout + proc.stderr)[-6000:], flush=True)
    expect(proc.returncode == 0 and out.is_file(), f"e2e_native exit {proc.returncode}: {proc.stderr[-2000:]}")
    runs = json.loads(out.read_text())["runs"]
    ours = next(r for r in runs if r["variant"] != "native")
    native = next(r for r in runs if r["variant"] == "native")
    vs = ours["vs_native"]
    return (f"ours/native seconds: encode {vs['encode']:.2f}, dit {vs['dit']:.2f}, decode {vs['decode']:.2f}, "
            f"total {vs['total']:.2f}; peak VRAM {e2e_gib(vs['peak_vram_ours_bytes'])} / "
            f"{e2e_gib(vs['peak_vram_native_bytes'])} GiB"), {"ours": ours, "native": native}


def e2e_gib(v: int | None) -> str:
    return "-" if v is None else f"{v / GiB:.2f}"


def _native_host() -> tuple[Path, Path]:
    """The ComfyUI 0.33.0 tree and a Python that imports it, without building anything (no network)."""
    import os

    tree, python = os.environ.get("SEEDVR2_COMFYUI_DIR"), os.environ.get("SEEDVR2_COMFYUI_PYTHON")
    if not (tree and python):
        cached = Path(os.environ.get("SEEDVR2_ACCEPTANCE_DIR", Path(tempfile.gettempdir()) / "seedvr2-acceptance"))
        tree, python = str(cached / "0.33.0" / "comfyui"), str(cached / "0.33.0" / "venv" / "bin" / "python")
    if not (Path(tree, "comfy", "ldm", "seedvr").is_dir() and Path(python).is_file()):
        raise CheckSkipped(f"no ComfyUI 0.33.0 host here ({tree}, {python}): set SEEDVR2_COMFYUI_DIR and "
                           "SEEDVR2_COMFYUI_PYTHON, or run .ci/setup_comfyui.sh 0.33.0 first")
    probe = subprocess.run([python, "-c", "import torch; assert torch.cuda.is_available()"], capture_output=True,
                           text=True, timeout=300)
    if probe.returncode != 0:
        raise CheckSkipped(f"{python} has no CUDA torch: {probe.stderr.strip().splitlines()[-1:]}")
    return Path(tree), Path(python)


# ------------------------------------------------------------------------------------------------

def print_summary(results: list[Result], header: str) -> None:
    print(f"\n{'=' * 100}\n{header}")
    print(f"{'check':<14}{'status':<8}{'seconds':>8}  summary")
    for r in results:
        print(f"{r.name:<14}{r.status:<8}{r.seconds:>8.1f}  {r.summary}")
    failed = [r.name for r in results if r.status == "FAIL"]
    print(f"{'=' * 100}\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")


def tiny_case(folder: Path) -> InferenceCase:
    """Check (b)'s code on the test suite's tiny models (for --cpu-smoke)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import VAE_TINY_CONFIG, write_tiny_models

    from seedvr2 import build_vae

    written = write_tiny_models(folder)

    def tiny_vae(dtype: torch.dtype) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_vae(VAE_TINY_CONFIG, dtype=dtype).eval().requires_grad_(False)

    return InferenceCase(folder, written.dit.name, tiny_vae, 2, (2, 8, 8), (5, 24, 32), 32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~2 minute subset")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--dit", type=Path, help="a 3B DiT checkpoint for check (b) (default: a random one, ~6.8 GB "
                                                 "written to a temp folder and deleted)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the random checkpoint (needs ~7 GB)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only these checks: cuda-tests 3b-inference fresh-slot pin-refused peak-memory bench "
                             "e2e e2e-baseline e2e-native")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="no GPU needed: run checks (b) and (g) on the tiny test models in block swap's CPU mode")
    args = parser.parse_args(argv)

    results: list[Result] = []
    wanted = (lambda name: args.only is None or name in args.only)
    if args.cpu_smoke:
        header = f"gpu_check --cpu-smoke: torch {torch.__version__}, CPU"
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            case = tiny_case(Path(tmp))
            run_check("3b-inference", lambda: check_inference_mode_swap(case, torch.device("cpu")), results)
        run_check("e2e", lambda: check_e2e(torch.device("cpu"), "tiny", None, ["resident", "12"], "12"), results)
        run_check("e2e-baseline", lambda: check_e2e_baseline(torch.device("cpu"), "tiny", None, "12"), results)
        return finish(results, header, args.json)

    if not torch.cuda.is_available():
        reason = (f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
                  "nothing to check here; run on a machine with an NVIDIA GPU")
        print(f"gpu_check: SKIPPED: {reason}")
        if args.json:
            args.json.write_text(json.dumps({"skipped": reason}, indent=1))
        return 0

    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    header = (f"gpu_check{' --quick' if args.quick else ''}: {props.name} ({props.total_memory / GiB:.0f} GiB), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(header, flush=True)
    t_start = time.perf_counter()
    if wanted("cuda-tests"):
        run_check("cuda-tests", lambda: check_cuda_tests(args.quick), results)
    if wanted("3b-inference"):
        with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.tmp) as tmp:
            def case_3b() -> tuple[str, dict]:
                if args.dit is not None:
                    folder, name = args.dit.resolve().parent, args.dit.name
                else:
                    folder, name = Path(tmp), write_random_3b(Path(tmp))
                case = InferenceCase(folder, name, released_vae, 16, (2, 16, 24), (5, 64, 96), 128)
                return check_inference_mode_swap(case, device)
            run_check("3b-inference", case_3b, results)
    if wanted("fresh-slot"):
        run_check("fresh-slot", lambda: check_fresh_slot_race(device, args.quick), results)
    if wanted("pin-refused"):
        run_check("pin-refused", lambda: check_refused_pin(device), results)
    if wanted("peak-memory"):
        run_check("peak-memory", lambda: check_peak_memory(device, args.quick), results)
    if wanted("bench"):
        run_check("bench", lambda: check_bench(args.quick), results)
    if wanted("e2e"):
        budgets = ["24"] if args.quick else ["resident", "24", "12"]
        run_check("e2e", lambda: check_e2e(device, "paper", E2E_FRAMES, budgets, None if args.quick else "24"),
                  results)
    if wanted("e2e-baseline") and not args.quick:
        run_check("e2e-baseline", lambda: check_e2e_baseline(device, "paper", E2E_FRAMES, "24"), results)
    if wanted("e2e-native") and not args.quick:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            run_check("e2e-native", lambda: check_e2e_native(Path(tmp)), results)
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")
    return finish(results, header, args.json)


def finish(results: list[Result], header: str, json_path: Path | None) -> int:
    print_summary(results, header)
    if json_path is not None:
        json_path.write_text(json.dumps({"header": header, "checks": [asdict(r) for r in results]}, indent=1,
                                        default=str))
        print(f"wrote {json_path}")
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
