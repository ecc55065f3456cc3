"""Our GGUF reader (standard library, no `gguf` package) against the `gguf` package's reader, on
files the `gguf` package writes: every tensor type, every metadata value type. Plus what the
reference does not check: hostile headers are refused by name without large allocations, GGUF
DiTs load with neither `gguf` nor numpy importable, and the tensor mappings are few and released.
"""
from __future__ import annotations

import gc
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seedvr2.checkpoint import CheckpointError
from seedvr2.quant.ggml import GGML_TYPES
from seedvr2.quant.gguf_file import ORIG_SHAPE_KEY, read_gguf_header, read_gguf_tensors
from seedvr2.quant.gguf_reader import GGML_TYPE_NAMES, GGUFFormatError, parse_gguf

gguf = pytest.importorskip("gguf", reason="the optional 'gguf' package is the reference for these tests")
np = pytest.importorskip("numpy")
REPO = Path(__file__).resolve().parents[1]

METADATA = {  # one entry of each GGUF value type, arrays included
    "t.u8": ("uint8", 200), "t.i8": ("int8", -100), "t.u16": ("uint16", 60000), "t.i16": ("int16", -30000),
    "t.u32": ("uint32", 4_000_000_000), "t.i32": ("int32", -2_000_000_000), "t.f32": ("float32", 1.5),
    "t.bool": ("bool", True), "t.str": ("string", "héllo"), "t.u64": ("uint64", 2**63 + 5),
    "t.i64": ("int64", -(2**62)), "t.f64": ("float64", 0.1),
}


def _write_reference_file(path: Path, seed: int = 0) -> None:
    """Tensors of all 13 types (1-D, 2-D and 3-D, random bytes) and metadata of every value type."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "anything")
    for key, (kind, value) in METADATA.items():
        getattr(writer, f"add_{kind}")(key, value)
    writer.add_array("t.arr_i32", [3, -1, 7])
    writer.add_array("t.arr_f32", [0.5, 2.0])
    writer.add_array("t.arr_str", ["a", "bc", ""])
    writer.add_array("comfy.gguf.orig_shape.flat", [4, 8])
    for name, qtype in GGML_TYPES.items():
        ref_type = gguf.GGMLQuantizationType[name]
        for dims, rows in (("1d", ()), ("2d", (3,)), ("3d", (2, 5))):
            blocks = 2 if qtype.quantized else 64
            raw = rng.integers(0, 256, size=(*rows, blocks * qtype.type_size), dtype=np.uint8)
            if name == "F32":
                writer.add_tensor(f"{name}.{dims}", raw.view(np.float32))
            elif name == "F16":
                writer.add_tensor(f"{name}.{dims}", raw.view(np.float16))
            else:
                writer.add_tensor(f"{name}.{dims}", raw, raw_dtype=ref_type)
    writer.add_tensor("flat", np.arange(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf_reader") / "all_types.gguf"
    _write_reference_file(path)
    return path


def test_the_header_is_what_the_gguf_package_reads(reference_file):
    metadata, raw = parse_gguf(reference_file)
    reader = gguf.GGUFReader(reference_file, "r")
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert metadata.keys() == expected.keys()
    for key, value in expected.items():
        assert metadata[key] == value and not isinstance(metadata[key], np.generic), (key, metadata[key], value)
    assert [t.name for t in raw] == [t.name for t in reader.tensors]
    for ours, ref in zip(raw, reader.tensors):
        assert ours.dims == tuple(int(d) for d in ref.shape), ours.name
        assert ours.type_id == int(ref.tensor_type) and ours.offset == int(ref.data_offset), ours.name
    assert len({GGML_TYPES[t.name.split(".")[0]].type_id for t in raw if t.name != "flat"}) == 13


def test_every_tensor_of_every_type_reads_the_same_bytes(reference_file):
    infos, metadata = read_gguf_header(reference_file)
    tensors = read_gguf_tensors(reference_file, infos)
    reader = gguf.GGUFReader(reference_file, "r")
    assert len(reader.tensors) == len(tensors) == 3 * 13 + 1
    for ref in reader.tensors:
        info, ours = infos[ref.name], tensors[ref.name]
        assert info.qtype.type_id == int(ref.tensor_type) and info.nbytes == int(ref.n_bytes), ref.name
        assert ours.contiguous().view(torch.uint8).numpy().tobytes() == np.asarray(ref.data).tobytes(), ref.name
        if info.qtype.quantized:
            assert ours.dtype == torch.uint8 and ours.shape[:-1] == tuple(int(d) for d in reversed(ref.shape))[:-1]
        elif ref.name != "flat":
            assert ours.dtype == info.torch_dtype and tuple(ours.shape) == tuple(int(d) for d in reversed(ref.shape))
    assert tuple(tensors["flat"].shape) == (4, 8)  # comfy.gguf.orig_shape.* restores the logical shape


def test_type_names_of_unsupported_types_are_the_gguf_packages():
    for type_id, name in GGML_TYPE_NAMES.items():
        assert gguf.GGMLQuantizationType(type_id).name == name
    for qtype in GGML_TYPES.values():
        assert GGML_TYPE_NAMES[qtype.type_id] == qtype.name


def test_a_gguf_dit_loads_and_runs_without_the_gguf_package_or_numpy(golden_dir, tmp_path):
    from seedvr2.convert import convert

    path = tmp_path / "tiny7b-Q8_0.gguf"
    convert(golden_dir / "dit7b_tiny_weights.safetensors", path, "q8_0")
    code = ("import sys; sys.modules['gguf'] = None; sys.modules['numpy'] = None\n"
            "import torch; from safetensors.torch import load_file; from seedvr2.dit import load_dit\n"
            "from seedvr2.quant.linear import QuantLinear\n"
            f"io = load_file({str(golden_dir / 'dit7b_tiny_io.safetensors')!r})\n"
            f"model = load_dit({str(path)!r}, compute_dtype=torch.float32)\n"
            "assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 32\n"
            "with torch.no_grad(): out = model(*(io[k] for k in ('vid', 'txt', 'vid_shape', 'txt_shape', 'timestep')))\n"
            "ref = io['out_fp32']\n"
            "print(float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.strip()) < 0.02


def test_mappings_are_few_and_dropped_with_their_tensors(tmp_path):
    """Per-tensor mappings would hold one file descriptor each (Python < 3.13) and run a 7B file
    (1128 tensors) into the usual limit of 1024 open files: a run with a limit of 64 must load 300."""
    path = tmp_path / "many.gguf"
    writer = gguf.GGUFWriter(path, "x")
    for i in range(300):
        writer.add_tensor(f"t{i}", np.full((4, 8), i, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
            "from seedvr2.quant.gguf_file import ORIG_SHAPE_KEY, read_gguf_header, read_gguf_tensors\n"
            f"infos, _ = read_gguf_header({str(path)!r}); t = read_gguf_tensors({str(path)!r}, infos)\n"
            "assert all(float(t[f't{i}'].sum()) == 32 * i for i in range(300)); print(len(t))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip() == "300", run.stderr[-2000:]
    if not Path("/proc/self/maps").exists():
        return
    infos, _ = read_gguf_header(path)
    tensors = read_gguf_tensors(path, infos)
    assert 1 <= _mappings_of(path) <= 2  # one region (the first page may be split off by alignment)
    tensors["t5"].add_(1)  # copy-on-write: the file is untouched
    assert float(read_gguf_tensors(path, infos, ["t5"])["t5"].sum()) == 32 * 5
    kept = tensors["t7"]
    del tensors
    gc.collect()
    assert _mappings_of(path) >= 1 and float(kept.sum()) == 32 * 7  # one tensor keeps its region
    del kept
    gc.collect()
    assert _mappings_of(path) == 0


def _mappings_of(path: Path) -> int:
    target = str(path.resolve())
    return sum(line.rstrip("\n").endswith(target) for line in open("/proc/self/maps"))


# ------------------------------------------------------------------------------------------
# Hostile or damaged headers: refused by name, quickly, without allocating what they declare
# ------------------------------------------------------------------------------------------

def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def _header(n_tensors: int, kvs: bytes = b"", n_kv: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs


def _tensor(name: str, dims: tuple[int, ...], type_id: int = 0, offset: int = 0) -> bytes:
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset)


HOSTILE = {
    "not gguf": (b"PK\x03\x04" + b"\0" * 60, "does not start with 'GGUF'"),
    "version 1": (_header(0, version=1) + b"\0" * 32, "GGUF version 1 is not supported"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + b"\0" * 32, "big-endian"),
    "2^60 tensors": (_header(2**60) + b"\0" * 64, "at most 65536 each"),
    "more tensors than bytes": (_header(1000) + b"\0" * 64, "more than the file can hold"),
    "huge string": (_header(0, struct.pack("<Q", 2**62) + b"k", 1) + b"\0" * 64, "more than the file can hold"),
    "huge array": (_header(0, _s("k") + struct.pack("<IIQ", 9, 5, 2**61), 1) + b"\0" * 64,
                   "more than the file can hold"),
    "deep arrays": (_header(0, _s("k") + struct.pack("<IIQIQIQ", 9, 9, 1, 9, 1, 9, 1), 1) + b"\0" * 64,
                    "nested more than 2 deep"),
    "bad value type": (_header(0, _s("k") + struct.pack("<I", 99), 1) + b"\0" * 64, "unknown metadata value type 99"),
    "bad utf-8": (_header(0, struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<IB", 0, 1), 1) + b"\0" * 64,
                  "not valid UTF-8"),
    "duplicate key": (_header(0, (_s("k") + struct.pack("<IB", 0, 1)) * 2, 2) + b"\0" * 64, "appears twice"),
    "five dims": (_header(1) + _tensor("w", (1, 1, 1, 1, 1)) + b"\0" * 64, "5 dimensions"),
    "zero dims": (_header(1) + _tensor("w", ()) + b"\0" * 64, "0 dimensions"),
    "duplicate tensor": (_header(2) + _tensor("w", (8,)) + _tensor("w", (8,), offset=32) + b"\0" * 128,
                         "repeats an earlier tensor's name"),
    "misaligned": (_header(1) + _tensor("w", (8,), offset=4) + b"\0" * 64, "not aligned to 32 bytes"),
    "bad alignment": (_header(1, _s("general.alignment") + struct.pack("<II", 4, 3), 1) + _tensor("w", (1,))
                      + b"\0" * 64, "must be a power of two"),
    "truncated header": (_header(1) + _tensor("w", (8,))[:-6], "past the end of the file"),
    "data past the end": (_header(1) + _tensor("w", (2**40,)) + b"\0" * 64, "ends past the end of the file"),
    "huge dims": (_header(1) + _tensor("w", (2**63, 2**63)) + b"\0" * 64, "ends past the end of the file"),
    "2 MiB string": (_header(0, _s("k") + struct.pack("<I", 8) + _s("x" * (2 << 20)), 1) + b"\0" * 64,
                     "(at most 1048576 are read)"),
    "unknown type": (_header(1) + _tensor("w", (8,), type_id=77) + b"\0" * 64, "GGML type #77 (unknown)"),
    "partial block": (_header(1) + _tensor("w", (20,), type_id=8) + b"\0" * 64, "not a whole number of 32-value"),
    "empty with a 2^64-1 dim": (_header(1) + _tensor("w", (2**64 - 1, 0)) + b"\0" * 64, "a dimension over 2^63 - 1"),
    "empty with a huge orig_shape": (_header(1, _s(ORIG_SHAPE_KEY + "w") + struct.pack("<IIQ2Q", 9, 10, 2, 2**63, 0), 1)
                                     + _tensor("w", (0,)) + b"\0" * 64, "a dimension over 2^63 - 1"),
    "aliased tensors": (_header(2) + _tensor("a", (16,)) + _tensor("b", (16,)) + b"\0" * 160, "share bytes"),
    "overlapping tensors": (_header(2) + _tensor("a", (16,)) + _tensor("b", (16,), offset=32) + b"\0" * 256,
                            "share bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_are_refused_by_name(tmp_path, case):
    from seedvr2.dit import load_dit

    data, reason = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as refused:
        load_dit(path)
    text = str(refused.value)
    assert text.startswith(str(path)) and reason in text, text


def test_long_arrays_are_stepped_over_not_kept(tmp_path):
    """Array values beyond MAX_KEPT_VALUES in all are skipped (their key left out), the rest kept."""
    from seedvr2.quant.gguf_reader import MAX_KEPT_VALUES  # noqa: PLC0415

    long = _s("long") + struct.pack("<IIQ", 9, 0, MAX_KEPT_VALUES + 1) + b"\1" * (MAX_KEPT_VALUES + 1)
    strings = _s("words") + struct.pack("<IIQ", 9, 8, 2) + _s("a") + _s("b")
    path = tmp_path / "long.gguf"
    path.write_bytes(_header(1, long + strings, 2) + _tensor("w", (8,)) + b"\0" * 64)
    metadata, infos = parse_gguf(path)
    assert metadata == {"words": ["a", "b"]} and [i.name for i in infos] == ["w"]


def test_too_many_values_end_the_parse_quickly(tmp_path, monkeypatch):
    import seedvr2.quant.gguf_reader as reader  # noqa: PLC0415

    monkeypatch.setattr(reader, "MAX_VALUES", 1000)
    path = tmp_path / "words.gguf"
    path.write_bytes(_header(0, _s("words") + struct.pack("<IIQ", 9, 8, 5000) + _s("a") * 5000, 1) + b"\0" * 64)
    with pytest.raises(GGUFFormatError, match="over 1000 metadata values"):
        parse_gguf(path)


def test_format_errors_are_value_errors_for_the_callers():
    assert issubclass(GGUFFormatError, ValueError)


def test_empty_tensors_next_to_each_other_are_not_overlaps(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(_header(3) + _tensor("a", (0, 4)) + _tensor("b", (16,)) + _tensor("c", (4, 0)) + b"\0" * 128)
    tensors = read_gguf_tensors(path, read_gguf_header(path)[0])
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"a": (4, 0), "b": (16,), "c": (0, 4)}


def test_a_file_truncated_after_its_header_was_read_is_refused_by_name(tmp_path, monkeypatch):
    """Between the header check and the mapping the file may change (a copy over it): Python's mmap
    then refuses the length, which must reach the user as a CheckpointError naming the file."""
    import os  # noqa: PLC0415

    import seedvr2.quant.gguf_file as gguf_file  # noqa: PLC0415
    from seedvr2.checkpoint import read_state_dict  # noqa: PLC0415

    path = tmp_path / "shrinks.gguf"
    path.write_bytes(_header(1) + _tensor("w", (64,)) + b"\0" * 512)
    real = gguf_file.read_gguf_tensors

    def truncate_first(p, infos, names=None):
        os.truncate(p, 40)
        return real(p, infos, names)

    monkeypatch.setattr(gguf_file, "read_gguf_tensors", truncate_first)
    with pytest.raises(CheckpointError, match="changed or truncated while loading") as refused:
        read_state_dict(path)
    assert str(refused.value).startswith(str(path))


@pytest.fixture(scope="module")
def tiny_q8_gguf(tmp_path_factory, golden_dir):
    from seedvr2.convert import convert  # noqa: PLC0415

    path = tmp_path_factory.mktemp("gguf_fuzz") / "tiny7b-Q8_0.gguf"
    convert(golden_dir / "dit7b_tiny_weights.safetensors", path, "q8_0")
    return path


def _first_tensor_named(data: bytes, prefix: bytes) -> int:
    return data.index(prefix, data.index(b"blocks.0."))


def test_a_quantized_tensor_under_a_name_the_model_lacks_is_a_checkpoint_error(tiny_q8_gguf, tmp_path):
    """Found by fuzzing: one changed byte in a quantized weight's name ('proj_out' -> 'proj]out')
    ended in torch's AttributeError from get_submodule instead of a CheckpointError."""
    from seedvr2.dit import load_dit  # noqa: PLC0415

    data = bytearray(tiny_q8_gguf.read_bytes())
    at = data.index(b"attn.proj_out.vid.weight") + len(b"attn.proj")
    data[at:at + 1] = b"]"
    path = tmp_path / "renamed.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"'blocks.\d.attn.proj]out.vid': the checkpoint quantizes this weight, but the model"):
        load_dit(path)


def test_a_quantized_layer_whose_model_size_is_not_whole_blocks_is_a_checkpoint_error():
    """Found by fuzzing: a file that makes a quantized layer's input size (from the config) not whole
    blocks ended in a bare ValueError from row_bytes inside QuantLinear."""
    from torch import nn  # noqa: PLC0415

    from seedvr2.quant.linear import GGMLScheme, swap_in_quant_linears  # noqa: PLC0415

    model = nn.Sequential(nn.Linear(48, 64))
    with pytest.raises(KeyError, match="stores this 64x48 layer as Q8_0, which cannot hold it"):
        swap_in_quant_linears(model, {"0": GGMLScheme(GGML_TYPES["Q8_0"])})
    with pytest.raises(KeyError, match="the model has no Linear layer there") as refused:
        swap_in_quant_linears(model, {"1.x\n" + "y" * 5000: GGMLScheme(GGML_TYPES["Q8_0"])})
    assert "\n" not in refused.value.args[0] and len(refused.value.args[0]) < 300  # a file's name, quoted and cut


def test_damaged_copies_of_a_real_gguf_dit_are_refused_by_name(tiny_q8_gguf, tmp_path):
    """Fuzz (bounded to ~3 s): the tiny Q8_0 DiT truncated at every byte of its header, then random
    bit flips in the header. Each load either works or raises CheckpointError naming the file; never
    another exception, a crash or a hang. (An offline run of 16k flips and every truncation found the
    two errors tested above.)"""
    import random  # noqa: PLC0415
    import time  # noqa: PLC0415

    from seedvr2.dit import load_dit  # noqa: PLC0415

    data = tiny_q8_gguf.read_bytes()
    header_end = min(i.offset for i in read_gguf_header(tiny_q8_gguf)[0].values())
    rng = random.Random(1234)
    cuts = sorted(rng.sample(range(header_end + 64), 300)) + [len(data) - 1]
    flips = []
    for _ in range(400):
        damaged = bytearray(data[:header_end + 32])
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
        flips.append(bytes(damaged) + data[header_end + 32:])
    path = tmp_path / "damaged.gguf"
    deadline = time.monotonic() + 3
    tried = 0
    for damaged in [data[:cut] for cut in cuts] + flips:
        if time.monotonic() > deadline and tried >= 50:
            break
        path.write_bytes(damaged)
        try:
            load_dit(path, compute_dtype=torch.float32)
        except CheckpointError as exc:
            assert str(path) in str(exc), str(exc)
        tried += 1
    assert tried >= 50


def test_the_longest_header_the_parser_accepts_parses_in_seconds_not_minutes(tmp_path):
    """A hostile header of MAX_VALUES tiny strings (a 128 MiB file with the former 2^24 limit) took
    over a minute to refuse. Timed on 10^5 strings and scaled to the limit (a bound, with a wide
    margin for slow machines): it must stay well under half a minute."""
    import time  # noqa: PLC0415

    from seedvr2.quant import gguf_reader  # noqa: PLC0415

    n = 100_000
    path = tmp_path / "strings.gguf"
    path.write_bytes(_header(0, _s("words") + struct.pack("<IIQ", 9, 8, n) + struct.pack("<Q", 0) * n, 1) + b"\0" * 64)
    start = time.perf_counter()
    metadata, _ = parse_gguf(path)
    elapsed = time.perf_counter() - start
    assert metadata == {"words": [""] * n}
    assert elapsed * gguf_reader.MAX_VALUES / n < 30, f"{elapsed:.2f} s for {n} strings"


def test_a_stray_tensor_name_cannot_forge_log_lines_or_flood_the_message(golden_dir, tmp_path):
    """An extra tensor named 'x\\nINFO: all good\\0zzz...' (a GGUF name may be 1 MiB of anything) was
    printed raw in the mismatch report: a forged log line, and up to 10 MiB of message."""
    from safetensors.torch import load_file  # noqa: PLC0415

    from seedvr2.dit import load_dit  # noqa: PLC0415

    path = tmp_path / "stray.gguf"
    writer = gguf.GGUFWriter(path, "seedvr")
    for key, value in load_file(golden_dir / "dit7b_tiny_weights.safetensors").items():
        writer.add_tensor(key, value.float().numpy())
    writer.add_tensor("blocks.0.x\nINFO: all good\0" + "z" * 100_000, np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="1 key\\(s\\) unexpected") as refused:
        load_dit(path)
    text = str(refused.value)
    assert "\nINFO" not in text and "\0" not in text and len(text) < 2000, text[:300]
    assert "'blocks.0.x\\nINFO: all good\\x00zzz" in text
