"""GGUF: torch dequantizers bitwise equal to the gguf package's numpy reference, GGUF DiTs load,
run and block-swap in their compressed form, and a missing `gguf` package is named."""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from blockswap import BlockSwapConfig, apply_block_swap
from blockswap_double import DeferredBackend, MasterReadDetector
from seedvr2.checkpoint import CheckpointError
from seedvr2.convert import convert
from seedvr2.dit import load_dit
from seedvr2.quant.ggml import GGML_TYPES, dequantize
from seedvr2.quant.gguf_file import GGUFOut
from seedvr2.quant.linear import QuantLinear

gguf = pytest.importorskip("gguf", reason="the optional 'gguf' package is the reference for these tests")

KEYS = ("vid", "txt", "vid_shape", "txt_shape", "timestep")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))).all())


@pytest.mark.parametrize("name", list(GGML_TYPES))
def test_dequantize_is_bitwise_the_gguf_reference(name):
    qtype = GGML_TYPES[name]
    ref_type = gguf.GGMLQuantizationType[name]
    assert (ref_type.value, (qtype.block_size, qtype.type_size)) == (qtype.type_id, gguf.GGML_QUANT_SIZES[ref_type])
    rng = np.random.default_rng(qtype.type_id)
    raw = rng.integers(0, 256, size=(5, 4 * qtype.type_size), dtype=np.uint8)  # 5 rows of 4 blocks
    if qtype.quantized:
        # Finite scales as in real files, plus the raw random ones (NaN/inf scales must match too).
        raw[:3] = gguf.quantize(rng.standard_normal((3, 4 * qtype.block_size)).astype(np.float32), ref_type) \
            if name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1") else raw[:3]
    with np.errstate(all="ignore"):
        ref = gguf.dequantize(raw, ref_type).astype(np.float32, copy=False)
    ours = dequantize(torch.from_numpy(raw.copy()), qtype)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == ref.shape
    assert _same_bits(ours.numpy(), ref)


def test_dequantize_refuses_partial_blocks():
    with pytest.raises(ValueError, match="Q4_K: last dimension 100 is not a multiple of the 144-byte block"):
        dequantize(torch.zeros(2, 100, dtype=torch.uint8), GGML_TYPES["Q4_K"])


@pytest.fixture(scope="module")
def golden7b(golden_dir):
    return golden_dir / "dit7b_tiny_weights.safetensors", load_file(golden_dir / "dit7b_tiny_io.safetensors")


def _run(model, io):
    with torch.no_grad():
        return model(*(io[k] for k in KEYS))


def _rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).pow(2).mean().sqrt() / ref.float().pow(2).mean().sqrt()).item()


@pytest.fixture(scope="module")
def q8_file(golden7b, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny7b-Q8_0.gguf"
    convert(golden7b[0], path, "q8_0")
    return path


def test_q8_0_gguf_loads_quantized_and_matches_the_official_output(q8_file, golden7b):
    model = load_dit(q8_file, compute_dtype=torch.float32)
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(quant) == 4 * 8  # every block matrix of the 4 blocks
    assert all(m.weight.dtype == torch.uint8 and m.scheme.name == "Q8_0" for m in quant.values())
    assert not isinstance(model.vid_in.proj, QuantLinear)
    out = _run(model, golden7b[1])
    assert _rel_rms(out, golden7b[1]["out_fp32"]) < 0.02
    # Each layer expands exactly the stored bytes (reference dequantizer of the same bytes).
    layer = model.blocks[1].mlp.vid.proj_out
    ref = gguf.dequantize(layer.weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert _same_bits(layer.dequantized_weight().numpy(), ref)


def test_f16_gguf_equals_the_f16_safetensors_model(golden7b, tmp_path):
    path = tmp_path / "tiny7b-F16.gguf"
    convert(golden7b[0], path, "f16")
    model = load_dit(path, compute_dtype=torch.float32)
    ref = load_dit(golden7b[0], dtype=torch.float16, compute_dtype=torch.float32)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert torch.equal(_run(model, golden7b[1]), _run(ref, golden7b[1]))


def _write_gguf(path, tensors: dict[str, torch.Tensor], types: dict[str, str], *, prefix: str = "", arch: str = "x"):
    """A GGUF holding `tensors`; those named in `types` are stored as random valid blocks of that type."""
    out = GGUFOut(path, arch=arch)
    data = {}
    for name, t in tensors.items():
        qtype = GGML_TYPES[types.get(name, "F32")]
        out.add(prefix + name, tuple(t.shape), qtype)
        if qtype.quantized:
            g = torch.Generator().manual_seed(len(data))
            raw = torch.randint(0, 256, (t.shape[0], t.shape[1] // qtype.block_size, qtype.type_size),
                                dtype=torch.uint8, generator=g)
            _set_small_scales(raw, qtype.name)
            data[name] = raw.reshape(t.shape[0], -1)
        else:
            data[name] = t.float()
    for name, t in tensors.items():
        out.write(prefix + name, data[name])
    out.close()
    return data


def _set_small_scales(raw: torch.Tensor, name: str) -> None:
    """Put finite fp16 scales (0.001) where each type keeps them, so outputs stay finite."""
    small = torch.tensor([0.001], dtype=torch.float16).view(torch.uint8)
    spots = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
             "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[name]
    for at in spots:
        raw[..., at:at + 2] = small


@pytest.mark.parametrize("qname", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_every_type_loads_from_a_gguf_file_and_expands_its_bytes(golden7b, tmp_path, qname):
    weights = load_file(golden7b[0])
    qtype = GGML_TYPES[qname]
    types = {k: qname for k, v in weights.items() if k.startswith("blocks.") and k.endswith(".weight")
             and v.dim() == 2 and v.shape[1] % qtype.block_size == 0}
    assert types
    path = tmp_path / f"t-{qname}.gguf"
    written = _write_gguf(path, weights, types, prefix="model.diffusion_model.", arch="seedvr")
    model = load_dit(path, compute_dtype=torch.float32)
    for key in types:
        layer = model.get_submodule(key[: -len(".weight")])
        assert isinstance(layer, QuantLinear) and torch.equal(layer.weight, written[key])
        ref = gguf.dequantize(written[key].numpy(), gguf.GGMLQuantizationType[qname])
        assert _same_bits(layer.dequantized_weight().numpy(), ref)
    assert torch.isfinite(_run(model, golden7b[1])).all()


def test_block_swap_streams_the_compressed_bytes(q8_file, golden7b):
    ref = load_dit(q8_file, compute_dtype=torch.float32)
    model = copy.deepcopy(ref)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=4, prefetch_blocks=2), "cpu", allow_cpu_device=True)
    for _ in range(2):
        assert torch.equal(_run(model, golden7b[1]), _run(ref, golden7b[1]))
    stats = handle.stats()
    stored = sum(t.numel() * t.element_size() for t in list(ref.parameters()) + list(ref.buffers()))
    assert stored <= stats.host_weight_bytes <= stored + 256 * 200  # masters hold the compressed bytes (+alignment)
    fp32 = load_dit(golden7b[0], compute_dtype=torch.float32)
    assert stats.host_weight_bytes < 0.5 * sum(p.numel() * 4 for p in fp32.parameters())
    assert not any(isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.dim() == 2
                   for m in model.modules() if isinstance(m, QuantLinear) for v in vars(m).values())
    handle.remove()


def test_block_swap_with_deferred_copies_never_reads_a_master(q8_file, golden7b):
    ref = load_dit(q8_file, compute_dtype=torch.float32)
    model = copy.deepcopy(ref)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=3, prefetch_blocks=1, swap_io_components=True),
                              "cuda", backend=DeferredBackend())
    detector = MasterReadDetector([u.buffer for u in handle.blocks + handle.io + handle.loose])
    with detector:
        for _ in range(2):
            assert torch.equal(_run(model, golden7b[1]), _run(ref, golden7b[1]))
    assert detector.reads == []
    handle.remove()


def test_without_the_gguf_package_gguf_files_load_and_writing_one_names_the_extra(q8_file, golden7b, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert any(isinstance(m, QuantLinear) for m in load_dit(q8_file).modules())
    with pytest.raises(ImportError, match=r"writing .gguf files needs .*pip install 'seedvr2-blockswap\[gguf\]'"):
        convert(golden7b[0], tmp_path / "out.gguf", "q8_0")
    assert not list(tmp_path.iterdir())


def test_truncated_gguf_is_refused_by_name(q8_file, tmp_path):
    cut = tmp_path / "cut.gguf"
    data = q8_file.read_bytes()
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="cut.gguf: .*(truncated|not a readable GGUF)"):
        load_dit(cut)


def test_a_quantized_non_linear_tensor_is_refused(golden7b, tmp_path):
    weights = load_file(golden7b[0])
    weights["blocks.0.attn.norm_q.vid.weight"] = torch.zeros(32, 32)  # make it 2-D so Q8_0 fits
    path = tmp_path / "odd.gguf"
    _write_gguf(path, {"x.weight": torch.zeros(4, 32), **weights}, {"x.weight": "Q8_0"})
    with pytest.raises(CheckpointError, match="odd.gguf"):
        load_dit(path)


def test_orig_shape_metadata_and_any_architecture_are_accepted(golden7b, tmp_path):
    """city96-style files: `comfy.gguf.orig_shape.<name>` restores a tensor stored flat; any arch name."""
    weights = load_file(golden7b[0])
    path = tmp_path / "flat.gguf"
    writer = gguf.GGUFWriter(path, "not-seedvr")
    flat = "vid_in.proj.weight"
    for name, t in weights.items():
        data = t.to(torch.float16).numpy()
        if name == flat:
            data = data.reshape(-1)
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(t.shape))
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = load_dit(path, compute_dtype=torch.float32)
    assert torch.equal(model.vid_in.proj.weight, weights[flat].to(torch.float16))


def test_the_pack_imports_and_loads_safetensors_without_gguf(golden7b):
    code = ("import sys; sys.modules['gguf'] = None; import seedvr2, seedvr2.quant, seedvr2.convert; "
            "from seedvr2.dit import load_dit; "
            f"load_dit({str(golden7b[0])!r}); print('ok')")
    import subprocess
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__('pathlib').Path(__file__).resolve().parents[1]))
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_model_folder_recognises_a_gguf_dit(q8_file):
    from seedvr2.models import inspect_checkpoint

    layout = inspect_checkpoint(q8_file)
    assert (layout.kind, layout.layout, layout.family, layout.num_blocks) == ("dit", "gguf", "7b", 4)
    assert torch.uint8 in layout.dtypes


def test_an_unsupported_ggml_type_is_named(tmp_path):
    path = tmp_path / "int.gguf"
    writer = gguf.GGUFWriter(path, "seedvr")
    writer.add_tensor("vid_in.proj.weight", np.zeros((4, 8), dtype=np.int8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"int.gguf: tensor #1 of 1 has GGML type I8, which this loader does not "
                                              r"support \(supported: F32, F16, Q4_0"):
        load_dit(path)
