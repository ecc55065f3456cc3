"""Emulated cards: does the automatic memory plan fit 6-24 GB GPUs, and how close are its predictions?

For each card (6, 8, 12, 16, 24 GB), model (3B fp16, 7B fp16, 7B fp8; full size, random weights),
output (720p, 1080p) and batch (5, 21), with the plan on "auto":

* without CUDA: prints the planner's PREDICTED table (what README shows) and exits 0;
* with CUDA: emulates the card with `torch.cuda.set_per_process_memory_fraction` (usable memory =
  card - 1.44 GiB, the CUDA context and desktop of a real card, hekmon), runs the whole pipeline on
  a random 16:9 clip in a fresh subprocess per cell, and records whether it ran, the measured peak
  (`max_memory_reserved`) against the prediction, and seconds per frame. Hand-tuned recipes
  (landscape.md, hekmon, 1080p) are printed alongside.

    python bench/fit_cards.py                 # predicted table (any machine)
    python bench/fit_cards.py --run           # measure on the GPU (needs RAM for the 7B fp16: ~17 GB)
    python bench/fit_cards.py --run --cards 8 12 --models 3b-fp16 --outputs 720p --batches 5
                                              # a subset: each cell builds its model afresh (~1 min for
                                              # the 7B) and runs a whole batch; all 60 cells take hours
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import seedvr2  # noqa: E402
from blockswap import BlockSwapConfig, apply_block_swap  # noqa: E402
from seedvr2 import MemoryFit, UpscaleModels, UpscaleSettings, VAETiling, plan_memory  # noqa: E402

GiB = 1 << 30
CONTEXT_GIB = 1.44  # CUDA context + driver + desktop on a real card (landscape.md 4.1, hekmon)
CARDS = (6, 8, 12, 16, 24)
MODELS = {"3b-fp16": ("3b", torch.float16), "7b-fp16": ("7b", torch.float16), "7b-fp8": ("7b", torch.float8_e4m3fn)}
OUTPUTS = {"720p": 720, "1080p": 1080}
BATCHES = (5, 21)
INPUT_HW = (540, 960)  # a 16:9 source
CLIP_FRAMES = 121       # the clip the predicted table plans for (its "largest batch" is capped by it)
RECIPES = {6: "-", 8: "7B Q4 swap 36, batch 17, tiles 640/512", 12: "7B Q4 swap 36, batch 33, tiles 896/640",
           16: "7B Q4 swap 36, batch 49, tiles 1024/768", 24: "7B fp16 swap 24, batch 45, tiles 1344/1024"}


@functools.lru_cache(maxsize=None)
def meta_models(model: str):
    family, dtype = MODELS[model]
    with torch.device("meta"):
        dit, vae = seedvr2.build_dit(family), seedvr2.build_vae("default")
    dit = _storage(dit, dtype)
    dit.compute_dtype = torch.bfloat16
    return dit, vae.to(torch.bfloat16)


def _storage(dit: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """fp8: matrices in fp8, vectors in bf16 (as fp8 checkpoints store them); else all in dtype."""
    if dtype != torch.float8_e4m3fn:
        return dit.to(dtype)
    dit.to(torch.bfloat16)
    for p in dit.parameters():
        if p.dim() >= 2:
            p.data = p.data.to(dtype)
    return dit


# Rope frequency buffers hold constants the model needs; random values would only change the
# pictures, not the memory, so the bench fills them like every other tensor.


def predicted(card: int, model: str, output: str, batch: int):
    dit, vae = meta_models(model)
    vram = int((card - CONTEXT_GIB) * GiB)
    return plan_memory(dit, vae, (CLIP_FRAMES, *INPUT_HW, 3), UpscaleSettings(resolution=OUTPUTS[output], batch_size=batch),
                       vram)


def print_predicted(args: argparse.Namespace) -> None:
    print(f"PREDICTED by seedvr2.plan_memory (pending GPU calibration); usable = card - {CONTEXT_GIB} GiB; "
          f"16:9 input of {CLIP_FRAMES} frames")
    print("| card | model | output | batch | blocks swapped | K | VAE tile | peaks enc / DiT / dec GiB | fits | "
          "largest batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for card in args.cards:
        for model in args.models:
            for output in args.outputs:
                for batch in args.batches:
                    p = predicted(card, model, output, batch)
                    peaks = " / ".join(f"{p.peak_bytes[k] / GiB:.1f}" for k in ("encode", "dit", "decode"))
                    print(f"| {card} GB | {model} | {output} | {batch} | {p.blocks_to_swap}/{p.blocks_total} | "
                          f"{p.prefetch_blocks} | {p.vae_tile_size or 'whole'} | {peaks} | "
                          f"{'yes' if p.fits else 'no'} | {p.max_batch_size} |")
    print("\nHand-tuned recipes (hekmon, emulated cards, 1080p):")
    for card in args.cards:
        print(f"  {card} GB: {RECIPES.get(card, '-')}")
    print_predicted_images(args)


IMAGE_OUTPUTS = {"8K": 4320, "16K": 8640}  # short side of a 16:9 output
IMAGE_INPUT_HW = (1080, 1920)


def print_predicted_images(args: argparse.Namespace) -> None:
    """Single 8K/16K images: where the DiT needs spatial tiles (seedvr2.dit.tiling)."""
    print(f"\nPREDICTED, single {IMAGE_INPUT_HW[1]}x{IMAGE_INPUT_HW[0]} images (batch 1): DiT tiles when every block "
          "swapped with K=1 is not enough")
    print("| card | model | output | blocks swapped | K | DiT | VAE tile | peaks enc / DiT / dec GiB | fits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for card in args.cards:
        for model in args.models:
            dit, vae = meta_models(model)
            for name, resolution in IMAGE_OUTPUTS.items():
                p = plan_memory(dit, vae, (1, *IMAGE_INPUT_HW, 3), UpscaleSettings(resolution=resolution, batch_size=1),
                                int((card - CONTEXT_GIB) * GiB))
                peaks = " / ".join(f"{p.peak_bytes[k] / GiB:.1f}" for k in ("encode", "dit", "decode"))
                dit_tiles = p.details["dit_tiles"] or "whole frame"
                print(f"| {card} GB | {model} | {name} | {p.blocks_to_swap}/{p.blocks_total} | {p.prefetch_blocks} | "
                      f"{dit_tiles} | {p.vae_tile_size or 'whole'} | {peaks} | {'yes' if p.fits else 'no'} |")


def random_dit(config, dtype: torch.dtype, gen: torch.Generator,
               compute_dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A DiT (`seedvr2.build_dit` config: "3b", "7b" or a mapping) with random weights in host RAM:
    built on meta, filled in place in bf16 (matrices N(0, 0.02^2), vectors N(0, 1)), then stored
    as `dtype` (fp8: matrices only), so no fp32 copy of the 7B is ever made."""
    with torch.device("meta"):
        dit = seedvr2.build_dit(config)
    dit = dit.to(torch.bfloat16).to_empty(device="cpu").requires_grad_(False)
    with torch.no_grad():
        for p in [*dit.parameters(), *dit.buffers()]:
            if p.is_floating_point():
                p.normal_(0.0, 0.02 if p.dim() >= 2 else 1.0, generator=gen)
    dit = _storage(dit, dtype)
    dit.compute_dtype = compute_dtype
    return dit


def random_models(model: str, device: torch.device):
    """Full-size models with random weights in host RAM (`random_dit`), block swap "auto" on `device`."""
    family, dtype = MODELS[model]
    gen = torch.Generator().manual_seed(0)
    dit = random_dit(family, dtype, gen)
    vae = seedvr2.build_vae("default").to(torch.bfloat16).requires_grad_(False)
    handle = apply_block_swap(dit, BlockSwapConfig(blocks_to_swap="auto"), device)
    pos_emb = torch.randn(58, dit.config.txt_in_dim, generator=gen)
    return dit, vae, handle, pos_emb


def run_cell(args: argparse.Namespace) -> dict:
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    usable = int((args.card - CONTEXT_GIB) * GiB)
    torch.cuda.set_per_process_memory_fraction(min(1.0, usable / total), device)
    dit, vae, handle, pos_emb = random_models(args.model, device)
    settings = UpscaleSettings(resolution=OUTPUTS[args.output], batch_size=args.batch, color_correction="none")
    frames = torch.rand(args.batch, *INPUT_HW, 3, generator=torch.Generator().manual_seed(1))
    models = UpscaleModels(dit, vae, pos_emb, device, dit_placement=handle,
                           vae_tiling=VAETiling(tile_size="auto"), memory=MemoryFit(vram_budget=usable))
    plan = plan_memory(dit, vae, tuple(frames.shape), settings, usable)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    ran, error = True, ""
    try:
        seedvr2.upscale(frames, models, settings)
        torch.cuda.synchronize(device)
    except torch.OutOfMemoryError as exc:
        ran, error = False, str(exc).splitlines()[0]
    seconds = time.perf_counter() - start
    return {"ran": ran, "error": error, "peak": torch.cuda.max_memory_reserved(device),
            "predicted": max(plan.peak_bytes.values()), "s_per_frame": seconds / args.batch, "plan": plan.summary()}


def run_all(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
    print(f"MEASURED on {torch.cuda.get_device_name()} (emulated cards: usable = card - {CONTEXT_GIB} GiB)")
    print("| card | model | output | batch | ran | peak GiB | predicted GiB | error % | s/frame | recipe |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for card in args.cards:
        for model in args.models:
            for output in args.outputs:
                for batch in args.batches:
                    cmd = [sys.executable, __file__, "--worker", "--card", str(card), "--model", model,
                           "--output", output, "--batch", str(batch)]
                    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.cell_timeout)
                    if done.returncode != 0:
                        print(f"| {card} GB | {model} | {output} | {batch} | crashed | | | | | "
                              f"{done.stderr.strip().splitlines()[-1:]} |")
                        continue
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    err = 100 * (r["peak"] - r["predicted"]) / r["predicted"]
                    print(f"| {card} GB | {model} | {output} | {batch} | {'yes' if r['ran'] else 'OOM'} | "
                          f"{r['peak'] / GiB:.2f} | {r['predicted'] / GiB:.2f} | {err:+.0f} | {r['s_per_frame']:.2f} | "
                          f"{RECIPES.get(card, '-')} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="measure on the GPU (default: print the prediction)")
    parser.add_argument("--cards", type=int, nargs="+", default=list(CARDS))
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--outputs", nargs="+", choices=sorted(OUTPUTS), default=list(OUTPUTS))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--cell-timeout", type=int, default=900)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--card", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_cell(args)))
        return
    if args.run and torch.cuda.is_available():
        run_all(args)
        return
    if args.run:
        print("no CUDA device: printing the prediction instead\n")
    print_predicted(args)


if __name__ == "__main__":
    main()
