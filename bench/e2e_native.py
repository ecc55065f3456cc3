"""Side by side with ComfyUI's native SeedVR2 (0.33.0): the same case through this pack's pipeline and
through native's own nodes, in one process, on the same device, with the same random weights.

Run with the ComfyUI host's Python (it imports `comfy` from the ComfyUI tree; this pack's
requirements are installed in that venv by `.ci/setup_comfyui.sh`), or let `bench/e2e.py --native`
find the host and re-run itself here:

    bench/e2e.py --case small --native                        # set-up of 0.33.0 found or built
    $PY bench/e2e_native.py --comfyui DIR --case paper --budgets resident 24
    $PY bench/e2e_native.py --comfyui DIR --check-layout      # our keys -> native keys, all models

It takes the options of `bench/e2e.py` (cases, frames, size, batch, budgets, --repeats, --json) and
prints, for each case and budget, ours and native per phase and the ratio ours/native of the seconds
(< 1: ours is faster) and both peak VRAMs. With --repeats N the two alternate N times and the fastest
run of each is compared (the first run of a process pays warm-up; a shared machine's load varies).

Native's code path is its video template (`utility_seedvr2_3b_int8_upscale_video.json`), its nodes
called in-process in the order the executor would run them:
  encode  ResizeImageMaskNode (scale by the case's multiplier, lanczos) -> SeedVR2Preprocess ->
          VAEEncodeTiled (512, 128, 64, 8)
  dit     SeedVR2TemporalChunk (manual, frames_per_chunk = the case's batch, overlap 0) ->
          per chunk SeedVR2Conditioning + KSampler (1 step, euler, simple, cfg 1, denoise 1) ->
          SeedVR2TemporalMerge
  decode  VAEDecodeTiled (512, 128, 64, 8) -> SeedVR2PostProcessing (the same colour correction)
ComfyUI loads models lazily, so native's encode and DiT phases include moving its VAE and DiT to
the device; ours count that in "other". The totals compare like for like. Host RAM: native gets a
copy of the weights (one more model's worth: 16 GB for the 7B in bf16).

Weights: our random DiT's state dict in native's single-file layout (`native_state_dict`: our key
names are the official ones, which native reads as they are, plus its `positive_conditioning`
(58x5120, our text embedding) and `negative_conditioning` (64x5120) buffers), loaded by
`comfy.sd.load_diffusion_model_state_dict` (model detection included); the VAE's state dict by
`comfy.sd.VAE(sd=...)`. Native hard-codes its model sizes: the released 3B and 7B DiT (detected from
the keys) and the released VAE (channels 128..512, whatever the file says). The `small` case's DiT
is not a released size, so its detection is answered with the same unet_config keys by hand; its
VAE is the released one, so `small` is the smallest case native can run (the `tiny` case cannot).

Budgets: `resident` is ComfyUI's default management (the whole model loaded when it fits); N GB
caps both runs to the card's usable memory (`set_per_process_memory_fraction`) and, for native,
reserves the rest (`comfy.model_management.EXTRA_RESERVED_VRAM`, what `--reserve-vram` sets), so
its own partial loading ("lowvram") streams what does not fit.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e  # noqa: E402  (puts the repo root and tests/ on sys.path)

HOST = "0.33.0"  # the ComfyUI release with native SeedVR2
NEGATIVE_TOKENS = 64  # native's negative_conditioning buffer: (64, 5120)
TILED = {"tile_size": 512, "overlap": 128, "temporal_size": 64, "temporal_overlap": 8}  # native's template


# --------------------------------------------------------------------------------------------
# finding the host (from bench/e2e.py --native)

def find_host() -> tuple[Path, Path]:
    """(ComfyUI tree, its Python): SEEDVR2_COMFYUI_DIR/SEEDVR2_COMFYUI_PYTHON, else what
    `.ci/setup_comfyui.sh 0.33.0` reports (it builds the host on first use, ~3 min)."""
    tree, python = os.environ.get("SEEDVR2_COMFYUI_DIR"), os.environ.get("SEEDVR2_COMFYUI_PYTHON")
    if tree and python:
        return Path(tree), Path(python)
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "setup_comfyui.sh"), HOST], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"e2e --native needs ComfyUI {HOST}: .ci/setup_comfyui.sh {HOST} exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-1000:]}\nor set SEEDVR2_COMFYUI_DIR and SEEDVR2_COMFYUI_PYTHON")
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith("SEEDVR2_COMFYUI_"))
    return Path(values["SEEDVR2_COMFYUI_DIR"]), Path(values["SEEDVR2_COMFYUI_PYTHON"])


def delegate(argv: list[str]) -> int:
    """Run this script with the host's Python and the same options (minus --native)."""
    tree, python = find_host()
    cmd = [str(python), str(Path(__file__).resolve()), "--comfyui", str(tree), *[a for a in argv if a != "--native"]]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


# --------------------------------------------------------------------------------------------
# native's layout

def native_state_dict(dit_state: dict[str, torch.Tensor], pos_emb: torch.Tensor,
                      neg_emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our DiT state dict -> native's single-file layout: the same (official) key names, plus the
    text conditioning native keeps inside the model. The tensors are shared, not copied."""
    dtype = next(iter(dit_state.values())).dtype
    extra = {"positive_conditioning": pos_emb.to(dtype), "negative_conditioning": neg_emb.to(dtype)}
    clash = sorted(set(extra) & set(dit_state))
    if clash:
        raise ValueError(f"our DiT state dict already holds native's keys {clash}")
    return {**dit_state, **extra}


def import_comfy(tree: Path, device: torch.device) -> None:
    """Import ComfyUI from `tree` without writing into it (no bytecode), on `device`'s kind."""
    if not (tree / "comfy" / "ldm" / "seedvr").is_dir():
        raise SystemExit(f"--comfyui {tree}: not a ComfyUI tree with native SeedVR2 (comfy/ldm/seedvr missing); "
                         f"use ComfyUI {HOST} or newer")
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(tree))
    from comfy.cli_args import args

    args.cpu = device.type == "cpu"
    import comfy.model_management  # noqa: F401  (reads args once, at import)


def native_models_on_meta(spec: e2e.ModelSpec) -> dict[str, dict[str, tuple[int, ...]]]:
    """Native's own DiT and VAE key names and shapes, built on the meta device from its classes."""
    import comfy.ldm.seedvr.model as native_dit
    import comfy.ldm.seedvr.vae as native_vae
    import comfy.ops

    with torch.device("meta"):
        dit = native_dit.NaDiT(**spec.native, operations=comfy.ops.disable_weight_init)
        vae = native_vae.VideoAutoencoderKLWrapper()
    return {"dit": {k: tuple(v.shape) for k, v in dit.state_dict().items()},
            "vae": {k: tuple(v.shape) for k, v in vae.state_dict().items()}}


def check_layout(spec: e2e.ModelSpec) -> dict:
    """Our model's keys converted to native's layout against native's own model: every native key
    present with its shape, nothing left over; and native's detection returns the expected config."""
    import comfy.model_detection

    with torch.device("meta"):
        dit = e2e.seedvr2.build_dit(spec.dit)
        vae = e2e.seedvr2.build_vae(spec.vae)
        ours = native_state_dict(dit.state_dict(), torch.empty(e2e.TXT_TOKENS, dit.config.txt_in_dim),
                                 torch.empty(NEGATIVE_TOKENS, dit.config.txt_in_dim))
    theirs = native_models_on_meta(spec)
    report = {"model": spec.name}
    for part, mine in (("dit", ours), ("vae", vae.state_dict())):
        mine_shapes = {k: tuple(v.shape) for k, v in mine.items()}
        report[part] = {
            "native_keys": len(theirs[part]),
            "missing": sorted(set(theirs[part]) - set(mine_shapes)),
            "unexpected": sorted(set(mine_shapes) - set(theirs[part])),
            "shape_mismatch": sorted(k for k in set(theirs[part]) & set(mine_shapes) if theirs[part][k] != mine_shapes[k]),
        }
    if spec.name in ("3b", "7b"):
        detected = comfy.model_detection.detect_unet_config(ours, "")
        report["detected"] = detected
        report["detected_ok"] = detected == spec.native
    report["ok"] = all(not report[p][k] for p in ("dit", "vae") for k in ("missing", "unexpected", "shape_mismatch")) \
        and report.get("detected_ok", True)
    return report


@contextlib.contextmanager
def detected_as(spec: e2e.ModelSpec) -> Iterator[None]:
    """Native's model detection knows the released sizes only: for `small`, answer it by hand."""
    if spec.name in ("3b", "7b"):
        yield
        return
    import comfy.model_detection as detection

    real = detection.detect_unet_config
    detection.detect_unet_config = lambda state_dict, key_prefix, metadata=None: dict(spec.native)
    try:
        yield
    finally:
        detection.detect_unet_config = real


# --------------------------------------------------------------------------------------------
# native's run

def load_native(m: e2e.Models, device: torch.device):
    """(ModelPatcher, comfy.sd.VAE) from our random models' weights."""
    import comfy.sd

    gen = torch.Generator().manual_seed(3)
    neg = torch.randn(NEGATIVE_TOKENS, m.dit.config.txt_in_dim, generator=gen)
    # Copies: ComfyUI may adopt the tensors it is given (load_state_dict(assign=True)) and our block
    # swap re-homes ours; neither run may see the other's placement.
    dit_state = {k: v.clone() for k, v in m.dit.state_dict().items()}
    sd = native_state_dict(dit_state, m.pos_emb, neg)
    with detected_as(m.spec):
        patcher = comfy.sd.load_diffusion_model_state_dict(sd)
    if patcher is None:
        raise RuntimeError("ComfyUI did not recognise the DiT state dict as SeedVR2")
    vae = comfy.sd.VAE(sd={k: v.clone() for k, v in m.vae.state_dict().items()})
    return patcher, vae


@contextlib.contextmanager
def native_budget(device: torch.device, budget: str) -> Iterator[str]:
    import comfy.model_management as mm

    if device.type != "cuda" or budget == "resident":
        yield "ComfyUI default management"
        return
    total = torch.cuda.get_device_properties(device).total_memory
    usable = int((float(budget) - e2e.CONTEXT_GIB) * e2e.GiB)
    saved = mm.EXTRA_RESERVED_VRAM
    mm.EXTRA_RESERVED_VRAM = max(saved, total - usable)
    torch.cuda.set_per_process_memory_fraction(min(1.0, usable / total), device)
    try:
        yield f"{budget} GB card ({usable / e2e.GiB:.2f} GiB usable), reserve-vram {(total - usable) / e2e.GiB:.1f} GiB"
    finally:
        mm.EXTRA_RESERVED_VRAM = saved
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def run_native(patcher, vae, m: e2e.Models, case: e2e.Case, device: torch.device, budget: str, input_scale: float,
               color: str, seed: int = 1) -> dict:
    """One timed upscale through native's nodes (see the module docstring); a record like e2e's."""
    import comfy.model_management as mm
    import nodes
    from comfy_extras.nodes_post_processing import ResizeImageMaskNode
    from comfy_extras.nodes_seedvr import (SeedVR2Conditioning, SeedVR2PostProcessing, SeedVR2Preprocess,
                                           SeedVR2TemporalChunk, SeedVR2TemporalMerge)

    frames = torch.rand(case.frames, *case.input_hw(input_scale), 3, generator=torch.Generator().manual_seed(seed))
    multiplier = case.output_hw[0] / frames.shape[1]
    mm.unload_all_models()
    mm.soft_empty_cache()
    with native_budget(device, budget) as describe, e2e.RssSampler() as sampler:
        timer = e2e.PhaseTimer(device, sampler)
        t0 = timer.sync()
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            timer("encode", 0, 1)
            resized = ResizeImageMaskNode.execute(input=frames, scale_method="lanczos", resize_type={
                "resize_type": "scale by multiplier", "multiplier": multiplier})[0]
            padded = SeedVR2Preprocess.execute(resized)[0]
            latent = nodes.VAEEncodeTiled().encode(vae, padded, **TILED)[0]
            timer("encode", 1, 1)

            timer("dit", 0, 1)
            chunks, overlap = SeedVR2TemporalChunk.execute(latent, 0, {"chunking_mode": "manual",
                                                                       "frames_per_chunk": case.batch}).args
            sampled = []
            for chunk in chunks:
                positive, negative = SeedVR2Conditioning.execute(patcher, chunk).args
                sampled.append(nodes.common_ksampler(patcher, seed, 1, 1.0, "euler", "simple", positive, negative,
                                                     chunk, denoise=1.0)[0])
            merged = SeedVR2TemporalMerge.execute(sampled, [overlap])[0]
            timer("dit", 1, 1)

            timer("decode", 0, 1)
            decoded = nodes.VAEDecodeTiled().decode(vae, merged, **TILED)[0]
            out = SeedVR2PostProcessing.execute(decoded, resized, color)[0]
            timer("decode", 1, 1)
        total = timer.sync() - t0
        end_vram = timer.peak_vram()
    out_hw = tuple(out.shape[-3:-1])
    phases = {p: e2e.figures(timer.seconds[p], case.frames, case.output_hw, timer.vram[p], timer.rss[p])
              for p in e2e.PHASES}
    vram_values = [v for v in (*timer.vram.values(), timer.gap_vram, end_vram) if v is not None]
    return {
        "case": case.name, "model": m.spec.name, "frames": case.frames, "input_hw": list(frames.shape[1:3]),
        "output_hw": list(case.output_hw), "native_output_shape": list(out.shape), "batch": case.batch,
        "budget": budget, "placement": describe, "variant": "native", "device": e2e.device_name(device),
        "color_correction": color, "plan": f"native {TILED}, output {out_hw[1]}x{out_hw[0]}",
        "chunks": len(chunks), "phases": phases, "other_seconds": total - sum(timer.seconds.values()),
        "total": e2e.figures(total, case.frames, case.output_hw, max(vram_values) if vram_values else None,
                             timer.peak_rss()),
        "model_build_seconds": m.build_s,
    }


# --------------------------------------------------------------------------------------------
# report

def ratios(ours: dict, native: dict) -> dict:
    """ours / native seconds per phase and in total (< 1: ours is faster), and the peak VRAMs."""
    out = {p: ours["phases"][p]["seconds"] / native["phases"][p]["seconds"] for p in e2e.PHASES}
    out["total"] = ours["total"]["seconds"] / native["total"]["seconds"]
    out["peak_vram_ours_bytes"] = ours["total"]["peak_vram_bytes"]
    out["peak_vram_native_bytes"] = native["total"]["peak_vram_bytes"]
    return out


def print_side_by_side(ours: dict, native: dict, r: dict) -> None:
    print(f"\n  ours/native  {'encode':>8}{'dit':>8}{'decode':>8}{'total':>8}   peak VRAM GiB ours / native")
    print(f"  seconds      {r['encode']:>8.2f}{r['dit']:>8.2f}{r['decode']:>8.2f}{r['total']:>8.2f}   "
          f"{e2e._gib(r['peak_vram_ours_bytes'])} / {e2e._gib(r['peak_vram_native_bytes'])}")
    print(f"  total: ours {ours['total']['seconds']:.2f} s ({ours['total']['fps']:.2f} fps), native "
          f"{native['total']['seconds']:.2f} s ({native['total']['fps']:.2f} fps): ours "
          f"{native['total']['seconds'] / ours['total']['seconds']:.2f}x as fast", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI tree (0.33.0 or newer)")
    pre.add_argument("--check-layout", action="store_true", help="check our keys -> native keys for 3b, 7b, small")
    mine, rest = pre.parse_known_args(argv)
    args = e2e.parse_args(rest)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    specs = e2e._model_specs()
    cases = e2e.resolve_cases(args)
    for case in cases if not mine.check_layout else []:
        if specs[case.model].native is None:
            raise SystemExit(f"case {case.name}: native SeedVR2 cannot build the {case.model} models (it hard-codes "
                             "the released VAE and DiT shapes); use --case small, paper or 7b1080")
    import_comfy(mine.comfyui, device)
    if mine.check_layout:
        reports = [check_layout(specs[name]) for name in ("3b", "7b", "small")]
        print(json.dumps(reports, indent=1, default=str))
        if args.json is not None:
            args.json.write_text(json.dumps(reports, indent=1, default=str))
        return 0 if all(r["ok"] for r in reports) else 1
    budgets = args.budgets or (["resident", "24", "12"] if device.type == "cuda" else ["resident"])
    print(f"e2e ours vs ComfyUI native ({mine.comfyui}) on {e2e.device_name(device)}", flush=True)
    records = []
    for case in cases:
        models = e2e.build_models(specs[case.model], device)
        t0 = time.perf_counter()
        patcher, vae = load_native(models, device)
        print(f"\nbuilt {case.model} models in {models.build_s:.1f} s, native loaded them in "
              f"{time.perf_counter() - t0:.1f} s (RSS {e2e.rss() / e2e.GiB:.2f} GiB)", flush=True)
        for budget in budgets:
            ours_runs, native_runs = [], []
            for _ in range(args.repeats):  # alternating, so that warm-up and machine load hit both alike
                ours_runs.append(e2e.run_upscale(models, case, device, budget, args.blocks, args.variant,
                                                 args.input_scale, args.color)[0])
                native_runs.append(run_native(patcher, vae, models, case, device, budget, args.input_scale,
                                              args.color))
            ours, native = e2e.fastest(ours_runs), e2e.fastest(native_runs)
            e2e.print_record(ours)
            e2e.print_record(native)
            r = ratios(ours, native)
            ours["vs_native"] = r
            print_side_by_side(ours, native, r)
            records += [ours, native]
        import comfy.model_management as mm

        del patcher, vae, models
        mm.unload_all_models()
        mm.soft_empty_cache()
    if args.json is not None:
        args.json.write_text(json.dumps({"device": e2e.device_name(device), "comfyui": str(mine.comfyui),
                                         "runs": records}, indent=1, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
