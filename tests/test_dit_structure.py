"""The DiT's contract with the block-swap engine, attention batching and backends, input checks."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from seedvr2.dit import attention as attention_mod
from seedvr2.dit import load_dit

IO_MODULES = ("vid_in", "txt_in", "emb_in", "vid_out", "vid_out_norm", "vid_out_ada")


@pytest.fixture()
def model(golden_dir, family):
    return load_dit(golden_dir / f"dit{family}_tiny_weights.safetensors", compute_dtype=torch.float32)


@pytest.fixture(scope="module")
def io(golden_dir, family):
    return load_file(golden_dir / f"dit{family}_tiny_batch2_io.safetensors")


def _run(model, io, **kwargs):
    with torch.no_grad():
        return model(io["vid"], io["txt"], io["vid_shape"], io["txt_shape"], io["timestep"], **kwargs)


def _stream_weights(module: torch.nn.Module, storage: torch.dtype, log: list, name: str):
    """Emulate block swap: weights live elsewhere and are present (in ``storage`` dtype) only while
    the module runs; the rest of the time the module holds meta tensors."""
    owners = [(m, kind, key) for m in module.modules() for kind in ("_parameters", "_buffers")
              for key in getattr(m, kind) if getattr(m, kind)[key] is not None]
    real = {id_: getattr(m, kind)[key] for id_, (m, kind, key) in enumerate(owners)}

    def to_meta(*_):
        for id_, (m, kind, key) in enumerate(owners):
            t = real[id_]
            getattr(m, kind)[key] = torch.empty_like(t, device="meta")

    def to_real(*_):
        log.append(name)
        for id_, (m, kind, key) in enumerate(owners):
            t = real[id_]
            getattr(m, kind)[key] = t.to(storage) if t.is_floating_point() and kind == "_parameters" else t

    to_meta()
    return [module.register_forward_pre_hook(to_real), module.register_forward_hook(to_meta)]


def test_block_swap_contract(model, io, golden_dir, family):
    """Blocks run via __call__ in order once each; the root and IO modules never use weights outside
    their own call; weights streamed in another storage dtype are cast at use."""
    assert not list(model.named_parameters(recurse=False))
    reference = _run(load_dit(golden_dir / f"dit{family}_tiny_weights.safetensors", dtype=torch.bfloat16,
                              compute_dtype=torch.float32), io)
    log: list[str] = []
    handles = []
    for name in IO_MODULES:
        if hasattr(model, name):
            handles += _stream_weights(getattr(model, name), torch.bfloat16, log, name)
    for i, block in enumerate(model.blocks):
        handles += _stream_weights(block, torch.bfloat16, log, f"block{i}")
    assert all(p.is_meta for p in model.parameters())
    out = _run(model, io)
    for h in handles:
        h.remove()
    assert torch.equal(out, reference)
    blocks = [entry for entry in log if entry.startswith("block")]
    assert blocks == [f"block{i}" for i in range(len(model.blocks))]
    io_used = {entry for entry in log if not entry.startswith("block")}
    assert io_used == {name for name in IO_MODULES if hasattr(model, name)}


def test_windows_sharing_a_shape_share_one_attention_call(model, monkeypatch):
    """A 45x80-token frame: 9 regular windows in 2 shapes, 16 shifted windows in 6 shapes: one call
    per shape per block, not one per window."""
    calls = []

    def counting_sdpa(q, k, v):
        calls.append(q.shape[0])
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    monkeypatch.setitem(attention_mod.ATTENTION_BACKENDS, "sdpa", counting_sdpa)
    one = {"vid": torch.randn(90 * 160, 33), "txt": torch.randn(5, model.config.txt_in_dim),
           "vid_shape": torch.tensor([[1, 90, 160]]), "txt_shape": torch.tensor([[5]]), "timestep": torch.tensor([1000.0])}
    _run(model, one)
    # regular: h 15/15/15 x w 27/27/26; shifted: h 7/15/15/8 x w 13/27/27/13 (windows per call)
    per_block = {False: [6, 3], True: [4, 4, 2, 2, 2, 2]}
    expected = [n for i in range(len(model.blocks)) for n in sorted(per_block[model.config.window_shifted[i]], reverse=True)]
    got = []
    cursor = 0
    for i in range(len(model.blocks)):
        size = len(per_block[model.config.window_shifted[i]])
        got += sorted(calls[cursor:cursor + size], reverse=True)
        cursor += size
    assert cursor == len(calls)
    assert got == expected


def test_compute_dtype_sets_activation_dtype(model, io):
    dtypes = []
    hook = model.blocks[0].register_forward_hook(lambda m, a, out: dtypes.append((a[0].dtype, out[0].dtype)))
    model.compute_dtype = torch.bfloat16
    out = _run(model, io)
    hook.remove()
    assert dtypes == [(torch.bfloat16, torch.bfloat16)]
    assert out.dtype == torch.float32  # returned in the dtype of vid
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # weights untouched


def test_flash_attn_backend_is_optional_and_plumbed(model, io, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    with pytest.raises(ValueError, match="needs the flash-attn package"):
        _run(model, io, attention="flash_attn")
    # A stand-in with flash-attn's calling convention ((n, S, H, D), bf16 in and out).
    fake = types.ModuleType("flash_attn")

    def flash_attn_func(q, k, v):
        assert q.dtype == torch.bfloat16 and q.ndim == 4
        out = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)))
        return out.transpose(1, 2).to(torch.bfloat16)

    fake.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    assert torch.equal(_run(model, io, attention="flash_attn"), _run(model, io, attention="flash_emul"))


def test_bad_inputs_get_clear_errors(model, io):
    good = dict(io)
    cases = [
        ({"vid": io["vid"][:-1]}, r"vid must be a float tensor \(1536, 33\)"),
        ({"vid_shape": torch.tensor([[3, 16, 24], [1, 24, 15]])}, "even H, W"),
        ({"vid_shape": io["vid_shape"].float()}, "vid_shape must be an integer tensor"),
        ({"txt": io["txt"][:, :10]}, r"txt must be a float tensor \(11, 80\)"),
        ({"txt_shape": torch.tensor([[11]])}, r"txt_shape must be an integer tensor \(2, 1\)"),
        ({"timestep": torch.tensor([1000.0])}, "one value per sample"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            _run(model, {**good, **change})
