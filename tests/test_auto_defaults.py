""""auto" is the default where a user would otherwise guess: the DiT loader without a config on
CUDA, and the command line's --blocks-to-swap / --vae-tile-size (with --vram-budget as the cap)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import seedvr2.cli as cli
import seedvr2.loaders as loaders
from blockswap import BlockSwapConfig
from seedvr2.cli import build_parser, main, program_name
from tiny_models import DIT_FILE, VAE_FILE, write_tiny_models


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto") / "models" / "SEEDVR2"
    write_tiny_models(folder)
    return folder


def _capture_apply(monkeypatch) -> list:
    seen = []

    def fake_apply(module, config, device, allow_cpu_device=False):
        seen.append((config, torch.device(device)))
        return SimpleNamespace(active=False, config=config, stats=lambda: SimpleNamespace(active=False),
                               remove=lambda: None)

    monkeypatch.setattr(loaders.blockswap, "apply_block_swap", fake_apply)
    return seen


def test_dit_loader_without_a_config_plans_on_cuda(models_dir, monkeypatch):
    seen = _capture_apply(monkeypatch)  # no GPU here: record what would be applied on one
    loaders.load_dit_model(DIT_FILE, models_dir, device="cuda", dtype="fp32", download=False)
    assert seen and seen[0][0].auto and seen[0][0].vram_budget is None


def test_dit_loader_without_a_config_on_cpu_swaps_nothing(models_dir, monkeypatch):
    seen = _capture_apply(monkeypatch)
    loaders.load_dit_model(DIT_FILE, models_dir, device="cpu", dtype="fp32", download=False, cpu_block_swap=True)
    assert seen[0][0] == BlockSwapConfig()  # CPU block-swap mode: unchanged, 0 swapped
    seen.clear()
    loaders.load_dit_model(DIT_FILE, models_dir, device="cpu", dtype="fp32", download=False, cpu_block_swap=False)
    assert not seen  # a plain CPU run places the module in place, as before


def test_dit_loader_keeps_a_given_config(models_dir, monkeypatch):
    seen = _capture_apply(monkeypatch)
    loaders.load_dit_model(DIT_FILE, models_dir, device="cuda", dtype="fp32", download=False,
                           block_swap={"blocks_to_swap": 4})
    assert seen[0][0].blocks_to_swap == 4


def test_cli_defaults_to_auto_and_parses_the_new_flags():
    args = build_parser().parse_args(["in.png"])
    assert (args.blocks_to_swap, args.vae_tile_size, args.vram_budget) == ("auto", "auto", None)
    args = build_parser().parse_args(["in.png", "--blocks-to-swap", "12", "--vae-tile-size", "0",
                                      "--vram-budget", "7.5"])
    assert (args.blocks_to_swap, args.vae_tile_size, args.vram_budget) == (12, 0, 7.5)
    assert build_parser().parse_args(["in.png", "--blocks-to-swap", "AUTO"]).blocks_to_swap == "auto"


@pytest.mark.parametrize("argv, message", [
    (["--blocks-to-swap", "-1"], "argument --blocks-to-swap: expected auto or a whole number >= 0, got -1"),
    (["--blocks-to-swap", "many"], "argument --blocks-to-swap: expected auto or a whole number"),
    (["--vae-tile-size", "big"], "argument --vae-tile-size: expected auto or a whole number"),
    (["--vram-budget", "0"], "argument --vram-budget: expected GiB greater than 0"),
    (["--vram-budget", "lots"], "argument --vram-budget: expected GiB as a number"),
])
def test_cli_rejects_bad_auto_flags_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser(prog="seedvr2").parse_args(["in.png", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_flags_reach_the_models_on_cuda(monkeypatch):
    seen = {}

    def fake_dit(*args, **kw):
        seen["dit"] = kw
        return SimpleNamespace(module=None, device=torch.device("cuda"))

    def fake_vae(*args, **kw):
        seen["vae"] = kw
        return SimpleNamespace(module=None, tiling=kw["tiling"])

    monkeypatch.setattr(cli, "load_dit_model", fake_dit)
    monkeypatch.setattr(cli, "load_vae_model", fake_vae)
    monkeypatch.setattr(cli, "upscale_models", lambda dit, vae: (dit, vae))
    cli.load_models(build_parser().parse_args(["in.png", "--vram-budget", "6"]), torch.device("cuda"))
    swap = BlockSwapConfig.coerce(seen["dit"]["block_swap"])
    assert swap.auto and swap.vram_budget == 6.0
    assert seen["vae"]["tiling"].tile_size == "auto"

    seen.clear()
    cli.load_models(build_parser().parse_args(["in.png", "--blocks-to-swap", "0", "--vae-tile-size", "0"]),
                    torch.device("cuda"))
    assert BlockSwapConfig.coerce(seen["dit"]["block_swap"]).blocks_to_swap == 0  # still built: CUDA always
    assert seen["vae"]["tiling"].tile_size is None

    seen.clear()
    cli.load_models(build_parser().parse_args(["in.png"]), torch.device("cpu"))
    assert seen["dit"]["block_swap"] is None  # CPU: auto changes nothing


def test_cli_auto_run_on_cpu(models_dir, tmp_path, capsys):
    """The defaults (auto) and explicit auto flags run on a CPU: nothing to plan against, 512-px tiles."""
    PIL = pytest.importorskip("PIL.Image", reason="Pillow is needed for image input/output")
    src = tmp_path / "in.png"
    PIL.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(src)
    common = ["--models-dir", str(models_dir), "--dit", DIT_FILE, "--vae", VAE_FILE, "--no-download",
              "--device", "cpu", "-q", "--resolution", "16"]
    assert main([str(src), "-o", str(tmp_path / "a.png"), *common]) == 0, capsys.readouterr().err
    assert main([str(src), "-o", str(tmp_path / "b.png"), *common, "--blocks-to-swap", "auto", "--vram-budget", "4",
                 "--vae-tile-size", "auto"]) == 0, capsys.readouterr().err
    a, b = (np.asarray(PIL.open(tmp_path / f"{n}.png")) for n in "ab")
    np.testing.assert_array_equal(a, b)


def test_help_names_the_invoked_program():
    assert program_name("/home/u/.venv/bin/seedvr2") == "seedvr2"
    assert program_name("/repo/seedvr2/__main__.py") == "python -m seedvr2"
    assert build_parser(prog="seedvr2").format_usage().startswith("usage: seedvr2 ")


def test_out_of_memory_message_says_the_plan_could_not_fit(monkeypatch, capsys):
    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "run", oom)
    assert main(["in.png"]) == 3
    err = capsys.readouterr().err
    assert "memory plan and its out-of-memory fallback" in err and "--batch-size" in err
    assert "Try --blocks-to-swap" not in err
