"""bench/e2e.py, the end-to-end speed bench: its `--tiny` CPU smoke run and the figures it reports.

The bench runs in-process (importing it costs nothing more than the suite has already paid) on the
test suite's tiny models: a few seconds on one thread. The properties checked are the ones the
issue's table is built from: every phase timed, fps = frames / seconds, megapixel-frames per second
from the output size, the total covering the phases, and `--check` comparing two variants' outputs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e  # noqa: E402


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("e2e") / "tiny.json"
    assert e2e.main(["--tiny", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)


def test_tiny_json_has_every_phase_with_consistent_figures(tiny_json: dict) -> None:
    (run,) = tiny_json["runs"]
    case = e2e.CASES["tiny"]
    assert (run["case"], run["frames"], run["batch"], tuple(run["output_hw"])) == \
        ("tiny", case.frames, case.batch, case.output_hw)
    assert run["budget"] == "resident" and run["variant"] == "fast"
    assert set(run["phases"]) == {"encode", "dit", "decode"}
    pixels = case.output_hw[0] * case.output_hw[1]
    for name, f in [*run["phases"].items(), ("total", run["total"])]:
        assert f["seconds"] > 0, name
        assert _close(f["fps"], case.frames / f["seconds"]), (name, f)
        assert _close(f["mpx_fps"], case.frames * pixels / 1e6 / f["seconds"]), (name, f)
        assert f["peak_rss_bytes"] > 0, name
        assert f["peak_vram_bytes"] is None, name  # CPU: no VRAM figure rather than a fake 0
    phases = sum(f["seconds"] for f in run["phases"].values())
    assert run["total"]["seconds"] >= phases
    assert _close(run["other_seconds"], run["total"]["seconds"] - phases)


def test_phase_timer_measures_each_phase_from_first_to_last_report() -> None:
    """The timer turns the pipeline's progress reports into per-phase seconds (no GPU needed)."""
    clock = iter([10.0, 10.5, 12.0, 13.0, 13.25, 20.0, 21.0])

    class FakeSampler:
        peak = 1

    sampler = FakeSampler()
    timer = e2e.PhaseTimer(torch.device("cpu"), sampler)
    timer.sync = lambda: next(clock)  # type: ignore[method-assign]
    big = 1 << 50  # far above any real RSS, which each phase start re-reads
    for report in [("encode", 0, 2), ("encode", 1, 2), ("encode", 2, 2), ("dit", 0, 1), ("dit", 1, 1),
                   ("decode", 0, 1), ("decode", 1, 1)]:
        timer(*report)
        if report == ("encode", 1, 2):
            sampler.peak = big  # the encode phase's peak, sampled mid-phase
    assert timer.seconds == {"encode": 2.0, "dit": 0.25, "decode": 1.0}
    assert timer.rss["encode"] == big and timer.rss["dit"] < big and timer.rss["decode"] < big
    assert timer.peak_rss() == big  # the run's peak survives the per-phase restarts


def test_streamed_budget_runs_block_swap_on_cpu(tmp_path: Path) -> None:
    path = tmp_path / "swap.json"
    assert e2e.main(["--tiny", "--budgets", "12", "--blocks", "2", "--json", str(path)]) == 0
    (run,) = json.loads(path.read_text())["runs"]
    assert run["budget"] == "12" and "2/4 blocks swapped" in run["plan"], run["plan"]
    assert run["total"]["seconds"] > 0


def test_check_reports_the_max_abs_diff_between_variants(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--check runs the case under two variants on the same models; today's eager and fast paths are the
    same code, so the outputs are equal."""
    path = tmp_path / "check.json"
    assert e2e.main(["--tiny", "--check", "--check-variants", "fast", "eager", "--json", str(path)]) == 0
    runs = json.loads(path.read_text())["runs"]
    assert [r["variant"] for r in runs] == ["fast", "eager"]
    assert runs[0]["check"]["max_abs_diff"] == 0.0
    assert "max |diff| 0" in capsys.readouterr().out


def test_check_diff_is_measured_not_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    """When variant B's output differs (here: shifted by 0.25), --check reports that difference."""
    real = e2e.run_upscale

    def shifted_for_other(models, case, device, budget, blocks, variant, *rest, **kwargs):
        record, out = real(models, case, device, budget, blocks, variant, *rest, **kwargs)
        return record, (out + 0.25 if variant.name == "other" else out)

    monkeypatch.setattr(e2e, "run_upscale", shifted_for_other)
    records = []
    monkeypatch.setattr(e2e, "print_record", records.append)
    assert e2e.main(["--tiny", "--check", "--check-variants", "fast", "other:E2E_TEST_FLAG=2"]) == 0
    assert records[0]["check"]["max_abs_diff"] == pytest.approx(0.25)
    assert records[0]["check"]["against"] == "other"


def test_variant_parsing_and_restoring() -> None:
    v = e2e.parse_variant("mine:SEEDVR2_X=1,SEEDVR2_Y=")
    assert v.name == "mine" and v.env == {"SEEDVR2_X": "1", "SEEDVR2_Y": ""}
    assert e2e.parse_variant("eager") is e2e.VARIANTS["eager"]
    with pytest.raises(Exception, match="variant must be one of"):
        e2e.parse_variant("nonsense")
    os.environ.pop("SEEDVR2_EAGER", None)
    import torch._dynamo

    before = torch._dynamo.config.disable
    with e2e.VARIANTS["eager"].applied():
        assert os.environ["SEEDVR2_EAGER"] == "1" and torch._dynamo.config.disable is True
    assert "SEEDVR2_EAGER" not in os.environ and torch._dynamo.config.disable == before
    os.environ["SEEDVR2_EAGER"] = "0"  # a value the user had set is put back, not dropped
    try:
        with e2e.VARIANTS["eager"].applied():
            assert os.environ["SEEDVR2_EAGER"] == "1"
        assert os.environ["SEEDVR2_EAGER"] == "0"
    finally:
        os.environ.pop("SEEDVR2_EAGER", None)


def test_standard_cases_are_the_issues() -> None:
    assert e2e.CASES["paper"] == e2e.Case("paper", "3b", 100, (768, 1344), 21)
    assert e2e.CASES["7b1080"] == e2e.Case("7b1080", "7b", 45, (1080, 1920), 21)


def test_bad_budget_is_named(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        e2e.parse_args(["--budgets", "lots"])
    assert "--budgets takes 'resident' or card sizes in GB, got 'lots'" in capsys.readouterr().err


def test_native_state_dict_adds_natives_conditioning_buffers() -> None:
    """Native's single-file DiT = our (official) keys + its two text-conditioning buffers, in the weights'
    dtype, sharing our tensors; a state dict that already has them is refused rather than overwritten."""
    import e2e_native

    state = {"blocks.0.attn.proj_qkv.vid.weight": torch.ones(2, 2, dtype=torch.bfloat16)}
    pos, neg = torch.randn(58, 5120), torch.randn(64, 5120)
    out = e2e_native.native_state_dict(state, pos, neg)
    assert set(out) == {*state, "positive_conditioning", "negative_conditioning"}
    assert out["positive_conditioning"].shape == (58, 5120) and out["negative_conditioning"].shape == (64, 5120)
    assert out["positive_conditioning"].dtype == torch.bfloat16
    assert torch.equal(out["positive_conditioning"].float(), pos.bfloat16().float())
    assert out["blocks.0.attn.proj_qkv.vid.weight"] is state["blocks.0.attn.proj_qkv.vid.weight"]
    with pytest.raises(ValueError, match="already holds native's keys"):
        e2e_native.native_state_dict(out, pos, neg)


def test_native_spec_matches_our_small_dit() -> None:
    """The `small` case's native unet_config describes the same DiT as our config (so the side-by-side
    compares equal models): width, heads, head size, depth, mm layers, rope."""
    spec = e2e._model_specs()["small"]
    c = e2e.SMALL_DIT_CONFIG
    n = spec.native
    assert (n["vid_dim"], n["heads"], n["head_dim"], n["num_layers"], n["mm_layers"], n["rope_dim"]) == \
        (c["vid_dim"], c["heads"], c["head_dim"], c["num_layers"], c["mm_layers"], c["rope_dim"])
    assert c["txt_in_dim"] == 5120 and c["txt_dim"] == c["vid_dim"] and c["emb_dim"] == 6 * c["vid_dim"]
    assert e2e._model_specs()["tiny"].native is None


def test_repeats_keep_the_fastest_run() -> None:
    runs = [{"total": {"seconds": s}, "case": "x"} for s in (3.0, 1.5, 2.0)]
    best = e2e.fastest(runs)
    assert best["total"]["seconds"] == 1.5 and best["repeats_total_seconds"] == [3.0, 1.5, 2.0]


def test_speed_variants_reach_the_models_and_are_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--variant tile_batch` runs with the VAE's SpeedOptions set, and the reused models get the
    shipped defaults back after the run."""
    from seedvr2.speed import SpeedOptions

    models = e2e.build_models(e2e._model_specs()["tiny"], torch.device("cpu"))
    seen = []
    real_upscale = e2e.seedvr2.upscale

    def spying(frames, m, *args, **kwargs):
        seen.append(m.vae.speed)
        return real_upscale(frames, m, *args, **kwargs)

    monkeypatch.setattr(e2e.seedvr2, "upscale", spying)
    e2e.run_upscale(models, e2e.CASES["tiny"], torch.device("cpu"), "resident", None, e2e.parse_variant("tile_batch"),
                    1.0, "none")
    assert seen == [SpeedOptions(tile_batch=4)]
    assert models.vae.speed == SpeedOptions()


def test_baseline_runs_the_same_case_with_the_other_trees_packages(tmp_path: Path) -> None:
    """`--baseline DIR` runs the case again in a subprocess importing seedvr2/blockswap from DIR and
    reports baseline/ours per phase and the max |diff| (here DIR is a copy of this tree: equal output)."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "baseline"
    for package in ("seedvr2", "blockswap"):
        shutil.copytree(root / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "with_baseline.json"
    assert e2e.main(["--tiny", "--baseline", str(tree), "--json", str(path)]) == 0
    (run,) = json.loads(path.read_text())["runs"]
    base = run["baseline"]
    assert Path(run["seedvr2"]) == root / "seedvr2"
    assert Path(base["seedvr2"]) == tree.resolve() / "seedvr2"  # the subprocess imported the baseline's packages
    assert (base["case"], base["frames"], base["budget"], base["output_hw"]) == \
        (run["case"], run["frames"], run["budget"], run["output_hw"])
    assert base["max_abs_diff_vs_ours"] == 0.0  # same code, same seeds: the same pixels
    for phase in ("encode", "dit", "decode"):
        assert _close(base["speedup"][phase], base["phases"][phase]["seconds"] / run["phases"][phase]["seconds"])
    assert _close(base["speedup"]["total"], base["total"]["seconds"] / run["total"]["seconds"])


def test_a_baseline_folder_without_the_packages_is_refused_naming_them(tmp_path: Path) -> None:
    (tmp_path / "seedvr2").mkdir()
    (tmp_path / "seedvr2" / "__init__.py").write_text("")
    with pytest.raises(SystemExit, match="missing: blockswap"):
        e2e.main(["--tiny", "--baseline", str(tmp_path)])
