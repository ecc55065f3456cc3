"""The speed switches users reach: `SpeedOptions.from_switches` (the one mapping), the CLI's
--compile / --channels-last / --no-cudnn-benchmark, and the DiT loader node's `torch_compile`.

Nothing here compiles: setting a block's compiled body is lazy (torch.compile traces on the first
call), so whether the switch reached the model is read from the blocks. That the compiled run
equals eager is tests/test_speed_dit.py's job (CPU) and the host's (tests/acceptance/
test_compile_host.py, inductor in a real ComfyUI).
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import seedvr2.cli as cli
from seedvr2.cli import build_parser
from seedvr2.speed import SpeedOptions
from test_node_wiring import pack  # noqa: F401  (fixture: the nodes with ComfyUI stand-ins)
from test_speed_dit import _uniform_dit


def _compiled(module: nn.Module) -> list[bool]:
    return [block.compiled_body is not None for block in module.blocks]


# ------------------------------------------------------------------------------------------------
# The mapping.

def test_switches_map_onto_options_and_default_to_the_default_options():
    assert SpeedOptions.from_switches() == SpeedOptions()
    assert SpeedOptions.from_switches(compile=True) == SpeedOptions(dit_compile=True)
    assert SpeedOptions.from_switches(channels_last=True) == SpeedOptions(channels_last=True)
    assert SpeedOptions.from_switches(cudnn_benchmark=False) == SpeedOptions(cudnn_benchmark=False)
    both = SpeedOptions.from_switches(compile=True, channels_last=True, cudnn_benchmark=False)
    assert (both.dit_compile, both.channels_last, both.cudnn_benchmark, both.tile_batch) == (True, True, False, 1)


@pytest.mark.parametrize("switch", ["compile", "channels_last", "cudnn_benchmark"])
def test_a_switch_that_is_not_a_bool_is_refused_by_its_name(switch):
    with pytest.raises(ValueError, match=rf"speed switch {switch} must be True or False, got 'yes'"):
        SpeedOptions.from_switches(**{switch: "yes"})


# ------------------------------------------------------------------------------------------------
# The command line.

def test_cli_speed_flags_parse_into_options():
    assert cli.speed_options(build_parser().parse_args(["in.png"])) == SpeedOptions()
    args = build_parser().parse_args(["in.png", "--compile", "--channels-last", "--no-cudnn-benchmark"])
    assert cli.speed_options(args) == SpeedOptions(dit_compile=True, channels_last=True, cudnn_benchmark=False)
    assert cli.model_spec(args).speed == cli.speed_options(args)  # what every process loads with


@pytest.mark.parametrize("flag", ["--compile", "--channels-last", "--no-cudnn-benchmark"])
def test_cli_speed_flag_given_a_value_is_refused_naming_it(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser(prog="seedvr2").parse_args(["in.png", f"{flag}=yes"])
    assert exit_info.value.code == 2 and f"argument {flag}: ignored explicit argument 'yes'" in capsys.readouterr().err


def test_cli_speed_flags_reach_both_models(monkeypatch):
    dit = _uniform_dit()
    vae = nn.Module()
    monkeypatch.setattr(cli, "load_dit_model", lambda *a, **kw: SimpleNamespace(module=dit, device=torch.device("cpu")))
    monkeypatch.setattr(cli, "load_vae_model", lambda *a, **kw: SimpleNamespace(module=vae, tiling=kw["tiling"]))
    monkeypatch.setattr(cli, "upscale_models", lambda d, v: (d, v))
    cli.load_models(build_parser().parse_args(["in.png", "--compile", "--channels-last", "--no-cudnn-benchmark"]),
                    torch.device("cpu"))
    assert all(_compiled(dit))
    assert vae.speed == SpeedOptions(dit_compile=True, channels_last=True, cudnn_benchmark=False)
    # The same models loaded again without the flags (a reused module): back to eager and defaults.
    cli.load_models(build_parser().parse_args(["in.png"]), torch.device("cpu"))
    assert not any(_compiled(dit)) and vae.speed == SpeedOptions()


def test_cli_compile_where_it_cannot_run_stops_before_any_work_naming_the_flag(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "compile_unavailable", lambda device: "no C++ compiler here (test)")
    monkeypatch.setattr(cli, "open_media", lambda *a: pytest.fail("the input was read before --compile was checked"))
    out = tmp_path / "out.png"
    code = cli.main([str(tmp_path / "in.png"), "-o", str(out), "--device", "cpu", "--compile"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --compile on cpu: no C++ compiler here (test); or run without --compile" in err
    assert not out.exists()


def test_cli_compile_check_asks_about_the_run_device(monkeypatch):
    asked = []
    monkeypatch.setattr(cli, "compile_unavailable", lambda device: asked.append(device))
    args = build_parser().parse_args(["in.png", "--compile"])
    cli.check_speed_switches(args, torch.device("cpu"))
    assert asked == [torch.device("cpu")]
    cli.check_speed_switches(build_parser().parse_args(["in.png"]), torch.device("cpu"))
    assert asked == [torch.device("cpu")]  # not asked without --compile


def test_cli_channels_last_off_cuda_warns_that_it_does_not_pay(caplog):
    with caplog.at_level(logging.WARNING, logger="seedvr2"):
        cli.check_speed_switches(build_parser().parse_args(["in.png", "--channels-last"]), torch.device("cpu"))
    assert "--channels-last on cpu" in caplog.text


def test_compile_unavailable_names_the_missing_piece(monkeypatch):
    import torch._inductor.config as inductor_config

    from seedvr2.speed import compile_unavailable

    with inductor_config.patch({"cpp.cxx": ("no-such-cxx-seedvr2",)}):  # restored after (monkeypatch would lose it)
        assert "needs a C++ compiler" in compile_unavailable("cpu")
    assert compile_unavailable("cpu") is None  # this machine has one: the check sees the restored setting
    import torch.utils._triton as triton_check

    monkeypatch.setattr(triton_check, "has_triton", lambda: False)
    assert "needs Triton" in compile_unavailable("cuda")


# ------------------------------------------------------------------------------------------------
# The DiT loader node.

def _dit_loader(pack, monkeypatch, module: nn.Module):  # noqa: F811
    loaders = pack.loaders
    loaded = SimpleNamespace(module=module, device=torch.device("cpu"), block_swap=None)
    monkeypatch.setattr(loaders.model_folder, "confined_model", lambda model, kind: model)
    monkeypatch.setattr(loaders.model_folder, "download_dir", lambda: "models")
    monkeypatch.setattr(loaders.model_folder, "model_dirs", lambda: [])
    monkeypatch.setattr(loaders, "load_dit_model", lambda *a, **kw: loaded)
    monkeypatch.setattr(loaders, "compile_unavailable", lambda device: None)
    return loaders.LoadDiTNode


def test_dit_loader_torch_compile_is_the_last_optional_widget_off_by_default(pack):  # noqa: F811
    inputs = pack.loaders.LoadDiTNode.define_schema().inputs
    assert [w.name for w in inputs] == ["model", "device", "dtype", "attention", "block_swap_config", "torch_compile"]
    widget = inputs[-1]
    assert widget.kind == "Boolean" and widget.default is False and widget.optional is True
    assert "torch.compile" in widget.tooltip and "Triton" in widget.tooltip


def test_dit_loader_torch_compile_compiles_and_off_returns_to_eager(pack, monkeypatch):  # noqa: F811
    dit = _uniform_dit()
    node = _dit_loader(pack, monkeypatch, dit)
    (out,) = node.execute("dit.safetensors", "cpu", "auto", "sdpa", None, True)
    assert out.module is dit and all(_compiled(dit))
    # The widget turned off: whatever model the loader hands on runs eager (here the same object).
    node.execute("dit.safetensors", "cpu", "auto", "sdpa", None, False)
    assert not any(_compiled(dit))
    node.execute("dit.safetensors", "cpu", "auto", "sdpa", None, True)
    node.execute("dit.safetensors", "cpu", "auto", "sdpa")  # a prompt saved before the input existed: off
    assert not any(_compiled(dit))


def test_dit_loader_torch_compile_where_it_cannot_run_is_refused_naming_the_input(pack, monkeypatch):  # noqa: F811
    node = _dit_loader(pack, monkeypatch, _uniform_dit())
    monkeypatch.setattr(pack.loaders, "compile_unavailable", lambda device: "needs Triton (test)")
    monkeypatch.setattr(pack.loaders, "load_dit_model", lambda *a, **kw: pytest.fail("loaded before the check"))
    with pytest.raises(ValueError, match=r"Load DiT: torch_compile on cpu: needs Triton \(test\); or turn torch_compile off"):
        node.execute("dit.safetensors", "cpu", "auto", "sdpa", None, True)
    with pytest.raises(ValueError, match="torch_compile must be true or false"):
        node.execute("dit.safetensors", "cpu", "auto", "sdpa", None, "yes")


def test_upscaler_logs_compiled_blocks_only_when_compiled(pack):  # noqa: F811
    dit = _uniform_dit()
    loaded = SimpleNamespace(module=dit)
    assert pack.upscale.compiled_blocks(loaded) == 0
    pack.loaders.apply_speed(pack.loaders.SpeedOptions(dit_compile=True), dit=dit)
    assert pack.upscale.compiled_blocks(loaded) == len(dit.blocks)
    pack.loaders.apply_speed(pack.loaders.SpeedOptions(), dit=dit)
