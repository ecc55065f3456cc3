"""End-to-end speed of the whole upscale (`seedvr2.upscale`), per phase, at paper scale.

Random weights of the right shapes and dtypes (they time the same as real ones): the DiT is built
on the meta device and filled in place (`fit_cards.random_dit`), the VAE is the released
architecture with PyTorch's default init. Each run upscales random frames and prints, per phase
(encode, DiT, decode) and in total: seconds, fps, output megapixel-frames per second, peak VRAM
(`torch.cuda.max_memory_reserved`, reset at each phase start) and peak host RSS.

    python bench/e2e.py --tiny                               # CPU smoke, seconds (CI)
    python bench/e2e.py --case paper --budgets resident 24 12   # 3B, 100 frames 768x1344, batch 21
    python bench/e2e.py --case 7b1080 --budgets 24 --json e2e.json
    python bench/e2e.py --case paper --budgets 24 --blocks 20   # explicit blocks instead of the plan
    python bench/e2e.py --case paper --frames 21 --check        # fast paths vs eager: max |diff|
    python bench/e2e.py --case small --native --repeats 2      # + ComfyUI's native SeedVR2 (e2e_native.py)
    python bench/e2e.py --case paper --budgets 24 --baseline 27be229  # + main before the speed work

Cases (`--case`, several allowed; --frames/--size/--batch override them):
  paper   3B, 100 frames, 768x1344 output, batch 21 (the SeedVR2 paper's H100 figure: 269 s)
  7b1080  7B, 45 frames, 1080x1920 output, batch 21
  small   a 2-block DiT of the released shapes' kind (width 256, text width 5120) + the released VAE,
          5 frames 64x112: the smallest case ComfyUI's native code can run (its VAE is full size)
  tiny    the test suite's tiny DiT and VAE, 6 frames 32x48, batch 5 (two batches; `--tiny`)
Input frames are the output size x `--input-scale` (0.5: a 2x upscale), float32 in 0..1 as
ComfyUI hands them over.

Budgets (`--budgets`, several allowed): `resident` = the whole DiT on the device, the VAE tiles
"auto" for the device's free memory (the nodes' default: whole frames on a large card); a number
N = a card of N GB emulated as `bench/fit_cards.py` does (usable = N - 1.44 GiB, enforced with
`torch.cuda.set_per_process_memory_fraction`): the DiT streamed by block swap, blocks and VAE tiles
from the automatic plan (`MemoryFit(vram_budget=usable)`), or `--blocks K` blocks swapped. The
memory plan's log line (`seedvr2` logger) is kept in each record (`memory_plan`). On the CPU a
budget runs block swap's CPU mode (the same streaming schedule with synchronous copies) and the
plan with `plan_on_cpu`; the figures then show overhead, not PCIe.

Phases are timed through the pipeline's `progress(phase, done, total)` callback (CUDA synchronized
at each call): a phase runs from its first report (done=0, after its model is loaded) to its last
(done=total); `other` is the rest of the wall time (loading and offloading models between phases,
setting up). fps = frames / seconds, for each phase and the total; Mpx-frames/s = frames x output
pixels / 1e6 / seconds.

Variants (the hook for speed switches; `--variant`, `--check`): a variant is a set of environment
variables applied around the run (and restored after), plus torch switches: `eager` disables
`torch.compile` (`torch._dynamo.config.disable`) and cuDNN autotuning and sets SEEDVR2_EAGER=1,
which the pipeline's fast paths must honour at call time to fall back to the reference code.
`compile` (DiT), `vae_compile`, `channels_last`, `tile_batch` and `all` (every one of them) set
`seedvr2.speed.SpeedOptions` on the models.
`--check` runs each case twice on the same models, `fast` (as shipped) then `eager`, and reports the
max |diff| of the outputs. Add switches by extending `VARIANTS`, or ad hoc: `--variant NAME:ENV=VALUE,...`.

Baseline (`--baseline DIR_OR_REV`, the issue's "faster than this project's current main"): after
each of our runs, the same case and budget again in a subprocess whose `seedvr2` and `blockswap`
come from an earlier revision (a folder holding both packages, or a git revision of this repo,
exported with `git archive`); the benches, random models and seeds are this tree's, so both sides
get the same weights and frames. Each side runs as it shipped (its default fast paths). Printed and
in the JSON (`baseline`): its record, baseline/ours seconds per phase and in total (> 1: ours is
faster) and the max |diff| of the outputs (0 when the pixels are unchanged). `27be229` is main
before the end-to-end speed work (copy-free causal padding, cuDNN autotuning, phase timing).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (ROOT, BENCH, ROOT / "tests"):  # the repo's packages, sibling benches, tiny test configs
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
# `--baseline DIR` re-runs this script with this variable set: `seedvr2` and `blockswap` are then
# imported from DIR (an earlier revision), everything else (benches, tiny configs) from this tree.
BASELINE_ENV = "SEEDVR2_E2E_BASELINE"
BASELINE_REV = "27be229"  # main before the end-to-end speed work: the "current main" (--baseline)
if os.environ.get(BASELINE_ENV):
    sys.path.insert(0, os.environ[BASELINE_ENV])

import seedvr2  # noqa: E402
from blockswap import BlockSwapConfig, apply_block_swap  # noqa: E402
from blockswap_bench import RssSampler, rss  # noqa: E402
from fit_cards import CONTEXT_GIB, random_dit  # noqa: E402
from seedvr2 import MemoryFit, ModulePlacement, UpscaleModels, UpscaleSettings, VAETiling  # noqa: E402
try:
    from seedvr2.speed import SpeedOptions, apply_speed  # noqa: E402
except ImportError:  # a --baseline revision from before seedvr2.speed: it runs as it shipped
    SpeedOptions = apply_speed = None  # type: ignore[assignment,misc]
from tiny_models import DIT3B_TINY_CONFIG, VAE_TINY_CONFIG  # noqa: E402

GiB = 1 << 30
PHASES = ("encode", "dit", "decode")
TXT_TOKENS = 58  # the released positive text embedding

# A DiT of the released 3B kind small enough for a CPU, and loadable by ComfyUI's native NaDiT (which
# hard-codes txt_dim = vid_dim, emb_dim = 6 vid_dim, windows (4, 3, 3) and a 5120-wide text input).
SMALL_DIT_CONFIG = {
    **DIT3B_TINY_CONFIG,
    "vid_dim": 256, "txt_in_dim": 5120, "txt_dim": 256, "emb_dim": 1536, "head_dim": 128, "num_layers": 2,
    "mm_layers": 1, "block_type": ["mmdit_sr"] * 2, "window": [[4, 3, 3]] * 2,
    "window_method": ["720pwin_by_size_bysize", "720pswin_by_size_bysize"], "rope_dim": 128,
}


@dataclass(frozen=True)
class ModelSpec:
    """Which DiT and VAE a case builds: `dit`/`vae` are `build_dit`/`build_vae` configs."""

    name: str
    dit: Any
    vae: Any

    @property
    def native(self) -> dict | None:
        """ComfyUI native's unet_config for this DiT (what its model detection returns for the
        released files; for `small`, the same keys by hand), or None when native cannot build it."""
        if self.name == "3b":
            return {"image_model": "seedvr2", "vid_dim": 2560, "heads": 20, "num_layers": 32, "norm_eps": 1e-5,
                    "mlp_type": "swiglu", "vid_out_norm": True}
        if self.name == "7b":
            return {"image_model": "seedvr2", "vid_dim": 3072, "heads": 24, "num_layers": 36, "mm_layers": 36,
                    "norm_eps": 1e-5, "rope_type": "rope3d", "rope_dim": 64, "mlp_type": "normal"}
        if self.name == "small":
            c = SMALL_DIT_CONFIG
            return {"image_model": "seedvr2", "vid_dim": c["vid_dim"], "heads": c["heads"], "head_dim": c["head_dim"],
                    "num_layers": c["num_layers"], "mm_layers": c["mm_layers"], "norm_eps": c["norm_eps"],
                    "mlp_type": "swiglu", "vid_out_norm": True, "rope_dim": c["rope_dim"]}
        return None


def _model_specs() -> dict[str, ModelSpec]:
    return {"3b": ModelSpec("3b", "3b", "default"), "7b": ModelSpec("7b", "7b", "default"),
            "small": ModelSpec("small", SMALL_DIT_CONFIG, "default"),
            "tiny": ModelSpec("tiny", DIT3B_TINY_CONFIG, VAE_TINY_CONFIG)}


@dataclass(frozen=True)
class Case:
    """One standard run: model, frames, output (height, width), frames per batch."""

    name: str
    model: str
    frames: int
    output_hw: tuple[int, int]
    batch: int

    def input_hw(self, scale: float) -> tuple[int, int]:
        return round(self.output_hw[0] * scale), round(self.output_hw[1] * scale)


CASES = {
    "paper": Case("paper", "3b", 100, (768, 1344), 21),
    "7b1080": Case("7b1080", "7b", 45, (1080, 1920), 21),
    "small": Case("small", "small", 5, (64, 112), 5),
    "tiny": Case("tiny", "tiny", 6, (32, 48), 5),
}


# --------------------------------------------------------------------------------------------
# variants: the switch board for fast paths

@dataclass(frozen=True)
class Variant:
    """Settings applied around one run: environment variables (restored after) and torch switches
    (None = leave as is)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    dynamo_disable: bool | None = None
    cudnn_benchmark: bool | None = None
    speed: SpeedOptions | None = None  # the models' fast paths (seedvr2.speed), None = as shipped

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        saved_env = {k: os.environ.get(k) for k in self.env}
        import torch._dynamo

        saved = (torch._dynamo.config.disable, torch.backends.cudnn.benchmark)
        os.environ.update(self.env)
        if self.dynamo_disable is not None:
            torch._dynamo.config.disable = self.dynamo_disable
        if self.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch._dynamo.config.disable, torch.backends.cudnn.benchmark = saved
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


VARIANTS = {
    "fast": Variant("fast"),  # as shipped: whatever the pipeline does by default (SpeedOptions())
    "eager": Variant("eager", {"SEEDVR2_EAGER": "1"}, dynamo_disable=True, cudnn_benchmark=False,
                     speed=SpeedOptions and SpeedOptions.eager()),
    "compile": Variant("compile", speed=SpeedOptions and SpeedOptions(dit_compile=True)),
    "vae_compile": Variant("vae_compile", speed=SpeedOptions and SpeedOptions(vae_compile=True)),
    "channels_last": Variant("channels_last", speed=SpeedOptions and SpeedOptions(channels_last=True)),
    "tile_batch": Variant("tile_batch", speed=SpeedOptions and SpeedOptions(tile_batch=4)),
    "all": Variant("all", speed=SpeedOptions and SpeedOptions(channels_last=True, tile_batch=4, dit_compile=True,
                                                              vae_compile=True)),
}


def parse_variant(text: str) -> Variant:
    """A name from VARIANTS, or `NAME:ENV=VALUE,ENV2=VALUE2` (environment only)."""
    if text in VARIANTS:
        return VARIANTS[text]
    name, sep, assignments = text.partition(":")
    pairs = [a.partition("=") for a in assignments.split(",") if a] if sep else []
    if not sep or not name or any(not k or not eq for k, eq, _ in pairs):
        raise argparse.ArgumentTypeError(f"variant must be one of {sorted(VARIANTS)} or NAME:ENV=VALUE[,ENV=VALUE], "
                                         f"got {text!r}")
    return Variant(name, {k: v for k, _, v in pairs})


# --------------------------------------------------------------------------------------------
# models

def random_vae(config: Any, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The VAE of `config` with PyTorch's default init (seeded: outputs stay finite, runs repeat)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return seedvr2.build_vae(config, dtype=dtype).eval().requires_grad_(False)


@dataclass
class Models:
    """The random-weight models of one spec, in host RAM, reused by every run of a case."""

    spec: ModelSpec
    dit: nn.Module
    vae: nn.Module
    pos_emb: torch.Tensor
    build_s: float


def dtypes_for(device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(storage, compute): bf16/bf16 on CUDA; on the CPU bf16 weights computed in fp32 for the full-size
    models (half the host RAM of fp32; the pipeline upcasts per layer), fp32 for the others."""
    if device.type == "cuda":
        return torch.bfloat16, torch.bfloat16
    return torch.bfloat16, torch.float32


def build_models(spec: ModelSpec, device: torch.device, seed: int = 0) -> Models:
    t0 = time.perf_counter()
    storage, compute = dtypes_for(device)
    if spec.name in ("tiny", "small"):
        storage = compute
    gen = torch.Generator().manual_seed(seed)
    dit = random_dit(spec.dit, storage, gen, compute_dtype=compute)
    vae = random_vae(spec.vae, compute, seed)
    pos_emb = torch.randn(TXT_TOKENS, dit.config.txt_in_dim, generator=gen)
    return Models(spec, dit, vae, pos_emb, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# placement for a budget

@dataclass
class Placed:
    """UpscaleModels for one budget, and how to undo the placement."""

    models: UpscaleModels
    describe: str
    undo: Callable[[], None]


def place(m: Models, device: torch.device, budget: str, blocks: int | None) -> Placed:
    """`resident`: the whole DiT on the device (ModulePlacement), VAE tiles "auto" planned for the
    device's free memory (whole frames when they fit: what the nodes' default gives a large card).
    A number of GB: block swap ("auto", or `blocks`) planned for that card's usable memory, VAE
    tiles "auto". On the CPU "auto" tiles are the default tile (no device to plan against)."""
    if budget == "resident":
        _memory_fraction(device, None)
        models = UpscaleModels(m.dit, m.vae, m.pos_emb, device, ModulePlacement(m.dit, device),
                               ModulePlacement(m.vae, device), VAETiling(tile_size="auto"), MemoryFit())
        return Placed(models, "resident", lambda: None)
    usable = int((float(budget) - CONTEXT_GIB) * GiB)
    _memory_fraction(device, usable)
    config = BlockSwapConfig(blocks_to_swap="auto" if blocks is None else blocks)
    handle = apply_block_swap(m.dit, config, device, allow_cpu_device=device.type == "cpu")
    memory = MemoryFit(vram_budget=usable, plan_on_cpu=device.type == "cpu")
    models = UpscaleModels(m.dit, m.vae, m.pos_emb, device, handle, ModulePlacement(m.vae, device),
                           VAETiling(tile_size="auto"), memory)

    def undo() -> None:
        handle.remove()
        _memory_fraction(device, None)

    return Placed(models, f"{budget} GB card ({usable / GiB:.2f} GiB usable), blocks "
                  f"{'auto' if blocks is None else blocks}", undo)


def _memory_fraction(device: torch.device, usable: int | None) -> None:
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if usable is None else min(1.0, usable / total), device)


# --------------------------------------------------------------------------------------------
# timing

class PhaseTimer:
    """The pipeline's progress callback: per phase wall time, peak VRAM and peak host RSS.

    A phase starts at its done=0 report and ends at done=total. At each start the CUDA peak is read
    (it covers the gap since the last reset: model loading) and reset, and the RSS sampler's peak is
    folded into the run's and restarted; at each end both peaks are recorded for the phase.
    `peak_rss()` is the run's peak RSS so far.
    """

    def __init__(self, device: torch.device, sampler: RssSampler):
        self.device, self.sampler = device, sampler
        self.start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.vram: dict[str, int | None] = {}
        self.rss: dict[str, int] = {}
        self.gap_vram: int | None = None
        self.run_rss = 0

    def sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def peak_vram(self) -> int | None:
        return torch.cuda.max_memory_reserved(self.device) if self.device.type == "cuda" else None

    def peak_rss(self) -> int:
        return max(self.run_rss, self.sampler.peak)

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.sync()
        if done == 0:
            if self.device.type == "cuda":
                self.gap_vram = max(self.gap_vram or 0, self.peak_vram())
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.run_rss = max(self.run_rss, self.sampler.peak)
            self.sampler.peak = rss()
            self.start[phase] = now
        if done == total:
            self.seconds[phase] = now - self.start[phase]
            self.vram[phase] = self.peak_vram()
            self.rss[phase] = self.sampler.peak


def figures(seconds: float, frames: int, output_hw: tuple[int, int], vram: int | None, rss_bytes: int) -> dict:
    return {"seconds": seconds, "fps": frames / seconds, "mpx_fps": frames * output_hw[0] * output_hw[1] / 1e6 / seconds,
            "peak_vram_bytes": vram, "peak_rss_bytes": rss_bytes}


def run_upscale(m: Models, case: Case, device: torch.device, budget: str, blocks: int | None, variant: Variant,
                input_scale: float, color: str, seed: int = 1) -> tuple[dict, torch.Tensor]:
    """One timed upscale; returns (the result record, the output frames on the host)."""
    frames = torch.rand(case.frames, *case.input_hw(input_scale), 3, generator=torch.Generator().manual_seed(seed))
    settings = UpscaleSettings(resolution=min(case.output_hw), batch_size=case.batch, color_correction=color)
    geometry = seedvr2.validate_upscale_inputs(frames, settings)
    if tuple(geometry.output_hw) != tuple(case.output_hw):
        raise SystemExit(f"case {case.name}: input {tuple(frames.shape[1:3])} gives output {geometry.output_hw}, "
                         f"not {case.output_hw}; pass another --input-scale")
    with variant.applied():
        placed = place(m, device, budget, blocks)
        _apply_speed(variant.speed, placed.models)
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            with RssSampler() as sampler, _plan_lines() as plan_lines:
                timer = PhaseTimer(device, sampler)
                t0 = timer.sync()
                out = seedvr2.upscale(frames, placed.models, settings, progress=timer)
                total = timer.sync() - t0
                end_vram = timer.peak_vram()
            plan = _plan_summary(placed.models)
        finally:
            _apply_speed(None, placed.models)  # models are reused
            placed.undo()
    phases = {p: figures(timer.seconds[p], case.frames, case.output_hw, timer.vram[p], timer.rss[p]) for p in PHASES}
    vram_values = [v for v in (*timer.vram.values(), timer.gap_vram, end_vram) if v is not None]
    record = {
        "case": case.name, "model": m.spec.name, "frames": case.frames, "input_hw": list(frames.shape[1:3]),
        "output_hw": list(case.output_hw), "batch": case.batch, "budget": budget, "placement": placed.describe,
        "variant": variant.name, "device": device_name(device), "color_correction": color, "plan": plan,
        "memory_plan": " | ".join(plan_lines),
        "phases": phases,
        "other_seconds": total - sum(timer.seconds.values()),
        "total": figures(total, case.frames, case.output_hw, max(vram_values) if vram_values else None,
                         timer.peak_rss()),
        "model_build_seconds": m.build_s,
        "seedvr2": str(Path(seedvr2.__file__).resolve().parent),  # which tree ran (--baseline)
    }
    return record, out


@contextlib.contextmanager
def _plan_lines() -> Iterator[list[str]]:
    """The `seedvr2` logger's memory-plan and fallback lines during the block (INFO and up)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "plan" in text or "out of memory" in text.lower():
                lines.append(text)

    logger, handler = logging.getLogger("seedvr2"), Keep(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _apply_speed(options: Any, models: UpscaleModels) -> None:
    """The variant's fast paths on the models (None: the defaults); nothing in a baseline revision
    without `seedvr2.speed` (it runs as it shipped)."""
    if apply_speed is not None:
        apply_speed(options or SpeedOptions(), vae=models.vae, dit=models.dit)


def _plan_summary(models: UpscaleModels) -> str:
    handle = models.dit_placement
    stats = getattr(handle, "stats", None)
    return stats().summary() if callable(stats) else "resident"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def fastest(records: list[dict]) -> dict:
    """The record with the shortest total; `repeats_total_seconds` lists every repeat's total."""
    best = dict(min(records, key=lambda r: r["total"]["seconds"]))
    best["repeats_total_seconds"] = [r["total"]["seconds"] for r in records]
    return best


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")


# --------------------------------------------------------------------------------------------
# report

def _gib(v: int | None) -> str:
    return "-" if v is None else f"{v / GiB:.2f}"


def print_record(r: dict) -> None:
    print(f"\n{r['case']}: {r['model']} {r['frames']} frames {r['input_hw'][1]}x{r['input_hw'][0]} -> "
          f"{r['output_hw'][1]}x{r['output_hw'][0]}, batch {r['batch']}, {r['placement']}, variant {r['variant']}")
    print(f"  plan: {r['plan']}")
    if r.get("memory_plan"):
        print(f"  memory plan: {r['memory_plan']}")
    print(f"  {'phase':<8}{'seconds':>10}{'fps':>9}{'Mpx-fr/s':>10}{'VRAM GiB':>10}{'RSS GiB':>9}")
    for name, f in [*r["phases"].items(), ("total", r["total"])]:
        print(f"  {name:<8}{f['seconds']:>10.3f}{f['fps']:>9.2f}{f['mpx_fps']:>10.2f}{_gib(f['peak_vram_bytes']):>10}"
              f"{_gib(f['peak_rss_bytes']):>9}")
    print(f"  (other: {r['other_seconds']:.3f} s loading/offloading between phases; models built in "
          f"{r['model_build_seconds']:.1f} s)", flush=True)


def resolve_cases(args: argparse.Namespace) -> list[Case]:
    names = ["tiny"] if args.tiny else args.case
    cases = []
    for name in names:
        case = CASES[name]
        if args.frames is not None:
            case = replace(case, frames=args.frames)
        if args.size is not None:
            case = replace(case, output_hw=tuple(args.size))
        if args.batch is not None:
            case = replace(case, batch=args.batch)
        cases.append(case)
    return cases


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", choices=sorted(CASES), default=["paper"])
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU smoke case (seconds)")
    parser.add_argument("--frames", type=int, help="override the case's frame count")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="override the output size")
    parser.add_argument("--batch", type=int, help="override the frames per batch (4n+1)")
    parser.add_argument("--input-scale", type=float, default=0.5, help="input size / output size (default 0.5)")
    parser.add_argument("--budgets", nargs="+", default=None,
                        help="resident and/or card sizes in GB (default: resident 24 12 on CUDA, resident on CPU)")
    parser.add_argument("--blocks", type=int, help="blocks to swap under a budget (default: the automatic plan)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--color", default="wavelet", help="colour correction (default wavelet)")
    parser.add_argument("--variant", type=parse_variant, default=VARIANTS["fast"],
                        help=f"{' | '.join(VARIANTS)} | NAME:ENV=VALUE,... (default fast)")
    parser.add_argument("--check", action="store_true", help="run each case fast and eager; report max |diff|")
    parser.add_argument("--check-variants", nargs=2, type=parse_variant, default=[VARIANTS["fast"], VARIANTS["eager"]],
                        metavar=("A", "B"), help="the two variants --check compares (default fast eager)")
    parser.add_argument("--native", action="store_true",
                        help="also run ComfyUI's native SeedVR2 on the same case (bench/e2e_native.py, in the host's venv)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each case/budget this many times and keep the fastest (noisy machines; default 1)")
    parser.add_argument("--baseline", metavar="DIR_OR_REV",
                        help="also run each case/budget with the seedvr2 and blockswap packages of an earlier "
                             "revision (a folder holding both, or a git revision of this repo), in a subprocess; "
                             "report baseline/ours per phase and the max |diff| of the outputs")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--save-output", type=Path, help=argparse.SUPPRESS)  # the baseline subprocess's output
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.baseline is not None and (args.check or args.native):
        parser.error("--baseline runs as shipped on both sides: not with --check or --native")
    for b in args.budgets or []:
        if b != "resident" and not _is_number(b):
            parser.error(f"--budgets takes 'resident' or card sizes in GB, got {b!r}")
    return args


def _is_number(text: str) -> bool:
    try:
        return float(text) > CONTEXT_GIB
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.native:
        from e2e_native import delegate

        return delegate(argv if argv is not None else sys.argv[1:])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budgets = args.budgets or (["resident", "24", "12"] if device.type == "cuda" else ["resident"])
    if args.save_output is not None and (len(budgets) > 1 or len(resolve_cases(args)) > 1):
        raise SystemExit("--save-output keeps one output: give one case and one budget")
    specs = _model_specs()
    print(f"e2e on {device_name(device)}; host RSS now {rss() / GiB:.2f} GiB", flush=True)
    records = []
    with contextlib.ExitStack() as stack:  # the baseline's temporary tree, if any, until the end
        baseline = None if args.baseline is None else stack.enter_context(baseline_tree(args.baseline))
        for case in resolve_cases(args):
            models = build_models(specs[case.model], device)
            print(f"\nbuilt {case.model} models in {models.build_s:.1f} s (RSS {rss() / GiB:.2f} GiB)", flush=True)
            for budget in budgets:
                if args.check:
                    records += check_variants(models, case, device, budget, args)
                else:
                    records.append(timed_run(models, case, device, budget, args, baseline))
            del models
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device_name(device), "runs": records}, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def check_variants(models: Models, case: Case, device: torch.device, budget: str,
                   args: argparse.Namespace) -> list[dict]:
    """`--check`: the case run with both `--check-variants` on the same models; both records get
    the max |diff| of the outputs and the speed-up of the first."""
    a_variant, b_variant = args.check_variants
    a, out_a = run_upscale(models, case, device, budget, args.blocks, a_variant, args.input_scale, args.color)
    print_record(a)
    b, out_b = run_upscale(models, case, device, budget, args.blocks, b_variant, args.input_scale, args.color)
    print_record(b)
    diff = max_abs_diff(out_a, out_b)
    del out_a, out_b
    a["check"] = b["check"] = {"against": b_variant.name, "max_abs_diff": diff,
                                "speedup": b["total"]["seconds"] / a["total"]["seconds"]}
    print(f"  check: {a_variant.name} vs {b_variant.name}: max |diff| {diff:.3g}, "
          f"{a_variant.name} {a['check']['speedup']:.2f}x faster", flush=True)
    return [a, b]


def timed_run(models: Models, case: Case, device: torch.device, budget: str, args: argparse.Namespace,
              baseline: Path | None) -> dict:
    """The case `--repeats` times (the fastest record kept), its output saved (`--save-output`), then
    the baseline revision's run of it when there is one (`record["baseline"]`)."""
    runs, out = [], None
    for _ in range(args.repeats):
        run, out = run_upscale(models, case, device, budget, args.blocks, args.variant, args.input_scale, args.color)
        runs.append(run)
    record = fastest(runs)
    print_record(record)
    if args.save_output is not None:
        torch.save(out, args.save_output)
    if baseline is not None:
        record["baseline"] = run_baseline(args, case, budget, device, baseline, record, out)
        print_baseline(record)
    return record


# --------------------------------------------------------------------------------------------
# baseline: the same run with an earlier revision's packages

@contextlib.contextmanager
def baseline_tree(spec: str) -> Iterator[Path]:
    """A folder holding an earlier revision's `seedvr2` and `blockswap` packages: `spec` itself when
    it is such a folder, else `git archive` of revision `spec` of this repo into a temporary one."""
    folder = Path(spec)
    if folder.is_dir():
        missing = [p for p in ("seedvr2", "blockswap") if not (folder / p / "__init__.py").is_file()]
        if missing:
            raise SystemExit(f"--baseline {spec}: a baseline folder holds the packages seedvr2/ and blockswap/ "
                             f"of a revision; missing: {', '.join(missing)}")
        yield folder.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="e2e-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", spec, "seedvr2", "blockswap"],
                                 capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"--baseline {spec}: neither a folder nor a git revision of {ROOT} "
                             f"({archive.stderr.decode(errors='replace').strip()[-300:]})")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp)


def run_baseline(args: argparse.Namespace, case: Case, budget: str, device: torch.device, tree: Path,
                 ours: dict, ours_out: torch.Tensor) -> dict:
    """The same case and budget run by this script in a subprocess that imports `seedvr2` and
    `blockswap` from `tree` (its own CUDA context and host memory; the same random weights, from
    the same seeds). Returns its record with the ratios baseline/ours (`speedup`, > 1: ours is
    faster) and the max |diff| of its output against ours (`max_abs_diff_vs_ours`)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the models are back in host RAM: leave the device to the subprocess
    with tempfile.TemporaryDirectory(prefix="e2e-baseline-run-") as tmp:
        json_path, out_path = Path(tmp, "baseline.json"), Path(tmp, "baseline.pt")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case.name, "--frames", str(case.frames),
               "--size", *map(str, case.output_hw), "--batch", str(case.batch), "--budgets", budget,
               "--input-scale", str(args.input_scale), "--color", args.color, "--repeats", str(args.repeats),
               "--device", str(device), "--threads", str(torch.get_num_threads()), "--json", str(json_path),
               "--save-output", str(out_path)]
        if args.blocks is not None:
            cmd += ["--blocks", str(args.blocks)]
        proc = subprocess.run(cmd, env={**os.environ, BASELINE_ENV: str(tree)}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the baseline run ({tree}) failed with exit status {proc.returncode}:\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
        (record,) = json.loads(json_path.read_text())["runs"]
        theirs = torch.load(out_path, mmap=True)
        record["max_abs_diff_vs_ours"] = max_abs_diff(ours_out, theirs)
        del theirs
    record["speedup"] = speedups(ours, record)
    return record


def speedups(ours: dict, baseline: dict) -> dict[str, float]:
    """baseline seconds / ours, per phase and in total (> 1: ours is faster)."""
    ratios = {p: baseline["phases"][p]["seconds"] / ours["phases"][p]["seconds"] for p in PHASES}
    ratios["total"] = baseline["total"]["seconds"] / ours["total"]["seconds"]
    return ratios


def print_baseline(r: dict) -> None:
    b = r["baseline"]
    ratios = b["speedup"]
    total = b["total"]
    print(f"  baseline ({b['seedvr2']}): total {total['seconds']:.3f} s, peak VRAM {_gib(total['peak_vram_bytes'])} GiB, "
          f"peak RSS {_gib(total['peak_rss_bytes'])} GiB")
    print("  baseline/ours seconds (> 1: ours faster): "
          + ", ".join(f"{p} {v:.2f}x" for p, v in ratios.items())
          + f"; max |diff| vs ours {b['max_abs_diff_vs_ours']:.3g}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
