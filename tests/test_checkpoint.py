"""seedvr2.checkpoint: header reading, state-dict reading (safetensors and .pth), strict loading."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from seedvr2.checkpoint import CheckpointError, load_into, read_header, read_state_dict


def _sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(3, 5, generator=g),
        "a.bias": torch.randn(3, generator=g).half(),
        "b.scale": torch.randn(7, generator=g).bfloat16(),
        "c.fp8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "d.index": torch.arange(6, dtype=torch.int64).view(2, 3),
        "e.scalar": torch.tensor(2.5),
        "f.empty": torch.empty(0, 4),
    }


@pytest.fixture()
def st_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(_sample_tensors(), str(path), metadata={"config": json.dumps({"k": 1})})
    return path


def test_read_header_reports_dtypes_shapes_and_metadata(st_file):
    header, metadata = read_header(st_file)
    expected = {k: (t.dtype, tuple(t.shape)) for k, t in _sample_tensors().items()}
    assert header == expected
    assert json.loads(metadata["config"]) == {"k": 1}


def test_read_state_dict_safetensors_is_bit_exact_and_keeps_dtypes(st_file):
    state = read_state_dict(st_file)
    ref = _sample_tensors()
    assert state.keys() == ref.keys()
    for k, t in ref.items():
        assert state[k].dtype == t.dtype, k
        assert state[k].device.type == "cpu"
        assert state[k].shape == t.shape, k
        assert torch.equal(_bytes(state[k]), _bytes(t)), k  # bytes: fp8 has no equality op


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def test_read_state_dict_key_filter_and_rename(tmp_path):
    path = tmp_path / "prefixed.safetensors"
    tensors = {"model.diffusion_model.x": torch.ones(2), "model.diffusion_model.y": torch.zeros(3), "vae.z": torch.ones(1)}
    save_file(tensors, str(path))
    prefix = "model.diffusion_model."
    state = read_state_dict(path, keys=lambda k: k.startswith(prefix), rename=lambda k: k[len(prefix):])
    assert sorted(state) == ["x", "y"]
    assert torch.equal(state["y"], torch.zeros(3))
    only = read_state_dict(path, keys={"vae.z", "not.there"}, rename={"vae.z": "z"})
    assert list(only) == ["z"]


def test_rename_collision_is_refused(tmp_path):
    path = tmp_path / "dup.safetensors"
    save_file({"a.w": torch.ones(1), "b.w": torch.ones(1)}, str(path))
    with pytest.raises(CheckpointError, match="both map to 'w'"):
        read_state_dict(path, rename=lambda k: "w")


def test_pth_unwraps_wrapper_and_matches_safetensors(tmp_path, st_file):
    tensors = {k: v for k, v in _sample_tensors().items()}
    path = tmp_path / "x.pth"
    torch.save({"ema": tensors, "step": 12}, path)
    header, metadata = read_header(path)
    assert metadata == {}
    assert header == {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    state = read_state_dict(path, keys=lambda k: k != "d.index")
    assert "d.index" not in state
    assert torch.equal(state["a.weight"], tensors["a.weight"])
    assert state["c.fp8"].dtype == torch.float8_e4m3fn


class Opaque:
    """An arbitrary pickled class: weights_only=True must refuse it."""


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "obj": Opaque()}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*weights_only=True"):
        read_state_dict(path)


def test_truncated_safetensors_is_refused(tmp_path, st_file):
    data = st_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(cut)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(tiny)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((20).to_bytes(8, "little") + b"{not json at all....")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(garbage)


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_header(tmp_path / "nope.safetensors")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="m.gguf: not a readable GGUF file"):
        read_header(gguf)
    with pytest.raises(CheckpointError, match="unsupported checkpoint type '.onnx'"):
        (tmp_path / "m.onnx").write_bytes(b"x")
        read_header(tmp_path / "m.onnx")


class _Toy(nn.Module):
    """Two parameters, a persistent buffer and a non-persistent buffer rebuilt after loading."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("table", torch.zeros(5))
        self.register_buffer("steps", torch.arange(4.0), persistent=False)

    def materialize_buffers(self, device: torch.device) -> None:
        self.steps = torch.arange(4.0, device=device)


def _toy_state() -> dict[str, torch.Tensor]:
    return {"lin.weight": torch.randn(3, 4), "lin.bias": torch.randn(3).half(), "table": torch.arange(5.0)}


def test_load_into_meta_module_assigns_and_materializes_buffers():
    with torch.device("meta"):
        toy = _Toy()
    state = _toy_state()
    weight = state["lin.weight"]
    load_into(toy, state, what="toy")
    assert toy.lin.weight.data_ptr() == weight.data_ptr()  # assigned, not copied
    assert toy.lin.bias.dtype == torch.float16  # file dtype kept without dtype=
    assert torch.equal(toy.steps, torch.arange(4.0))
    assert not any(t.is_meta for t in list(toy.parameters()) + list(toy.buffers()))


def test_load_into_casts_floats_but_keeps_fp8():
    with torch.device("meta"):
        toy = _Toy()
    state = _toy_state()
    state["lin.weight"] = state["lin.weight"].to(torch.float8_e4m3fn)
    load_into(toy, state, what="toy", dtype=torch.bfloat16)
    assert toy.lin.weight.dtype == torch.float8_e4m3fn
    assert toy.lin.bias.dtype == torch.bfloat16
    assert toy.table.dtype == torch.bfloat16


def test_load_into_reports_missing_unexpected_and_misshaped():
    with torch.device("meta"):
        toy = _Toy()
    state = _toy_state()
    del state["lin.bias"]
    state["lin.weigth"] = torch.zeros(1)
    state["table"] = torch.zeros(6)
    with pytest.raises(CheckpointError) as info:
        load_into(toy, state, what="toy model from 'f.safetensors'")
    msg = str(info.value)
    assert "toy model from 'f.safetensors'" in msg
    assert "1 key(s) missing from the file" in msg and "lin.bias" in msg
    assert "1 key(s) unexpected" in msg and "lin.weigth" in msg
    assert "table: file [6], model [5]" in msg


def test_load_into_report_is_capped():
    with torch.device("meta"):
        toy = _Toy()
    state = _toy_state() | {f"extra.{i}": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointError, match=r"25 key\(s\) unexpected[\s\S]*and 15 more"):
        load_into(toy, state, what="toy")


def test_load_into_without_materialize_hook_fails_loudly():
    class NoHook(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
            self.register_buffer("tmp", torch.zeros(2), persistent=False)

    with torch.device("meta"):
        mod = NoHook()
    with pytest.raises(RuntimeError, match="materialize_buffers"):
        load_into(mod, {"w": torch.ones(2)}, what="nohook")
