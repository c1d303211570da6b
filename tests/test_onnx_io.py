"""Tests of front_onnx.onnxio.model: reading and writing ONNX initializers."""
from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from front_onnx.errors import OutputRefused
from front_onnx.onnxio import OnnxFileError, external_data_files, load_model, save_model, tensor_nbytes
from front_onnx.onnxio import writer as onnx_io

BF16 = np.dtype(ml_dtypes.bfloat16)
RNG = np.random.default_rng(0)

# --------------------------------------------------------------------------- #
# A test graph with fp32 / fp16 / bf16 / fp64 / int64 initializers, one of them
# (B) shared by two nodes. Output:
#   reshape( f64( f32( f16((X @ W32 + B) * B) + W16 ) + f32(WBF) ) + W64, SHAPE )
# --------------------------------------------------------------------------- #

ORIG = {
    "W32": RNG.standard_normal((16, 32)).astype(np.float32),
    "B": RNG.standard_normal(32).astype(np.float32),
    "W16": RNG.standard_normal(32).astype(np.float16),
    "WBF": RNG.standard_normal(32).astype(BF16),
    "W64": RNG.standard_normal(32),
    "SHAPE": np.array([-1], dtype=np.int64),
}
X = RNG.standard_normal((2, 16)).astype(np.float32)


def reference(v: dict[str, np.ndarray], b_add=None, b_mul=None) -> np.ndarray:
    b_add = v["B"] if b_add is None else b_add
    b_mul = v["B"] if b_mul is None else b_mul
    a = ((X @ v["W32"]).astype(np.float32) + b_add) * b_mul
    h = a.astype(np.float16) + v["W16"]
    f = h.astype(np.float32) + v["WBF"].astype(np.float32)
    d = f.astype(np.float64) + v["W64"]
    return d.reshape(-1)


def build_model() -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(ORIG["W32"], "W32"),  # raw_data
        numpy_helper.from_array(ORIG["B"], "B"),  # raw_data
        # typed fields: int32_data for fp16/bf16, double_data, int64_data
        helper.make_tensor("W16", TensorProto.FLOAT16, [32], ORIG["W16"]),
        helper.make_tensor("WBF", TensorProto.BFLOAT16, [32], ORIG["WBF"]),
        helper.make_tensor("W64", TensorProto.DOUBLE, [32], ORIG["W64"]),
        helper.make_tensor("SHAPE", TensorProto.INT64, [1], ORIG["SHAPE"]),
    ]
    inits[0].doc_string = "the matmul weight"
    nodes = [
        helper.make_node("MatMul", ["X", "W32"], ["Y1"], name="mm"),
        helper.make_node("Add", ["Y1", "B"], ["A"], name="add_b"),
        helper.make_node("Mul", ["A", "B"], ["A2"], name="mul_b"),
        helper.make_node("Cast", ["A2"], ["H"], to=TensorProto.FLOAT16),
        helper.make_node("Add", ["H", "W16"], ["H2"]),
        helper.make_node("Cast", ["H2"], ["F"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["WBF"], ["BF"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["F", "BF"], ["F2"]),
        helper.make_node("Cast", ["F2"], ["D"], to=TensorProto.DOUBLE),
        helper.make_node("Add", ["D", "W64"], ["D2"]),
        helper.make_node("Reshape", ["D2", "SHAPE"], ["OUT"]),
    ]
    nodes[0].metadata_props.add(key="source", value="layer0")
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("OUT", TensorProto.DOUBLE, [64])],
        initializer=inits,
        value_info=[helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 32])],
        doc_string="graph doc",
    )
    fn = helper.make_function(
        "local", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 17)])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        producer_name="front-test", producer_version="9.9", functions=[fn])
    model.ir_version = 10
    model.domain = "test.domain"
    model.model_version = 7
    model.doc_string = "model doc"
    helper.set_model_props(model, {"author": "tests", "license": "none"})
    onnx.checker.check_model(model)
    return model


def write(model: onnx.ModelProto, path: Path, external: bool, location: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location or path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def run_ort(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": X})[0]


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir()) if p.is_file()}


def strip_initializers(m: onnx.ModelProto) -> bytes:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    del c.graph.initializer[:]
    return c.SerializeToString(deterministic=True)


@pytest.fixture(params=["inline", "external"])
def src(request, tmp_path) -> Path:
    return write(build_model(), tmp_path / "in" / "model.onnx", request.param == "external")


@pytest.fixture
def ext_src(tmp_path) -> Path:
    return write(build_model(), tmp_path / "in" / "model.onnx", True)


def new_values() -> dict[str, np.ndarray]:
    r = np.random.default_rng(1)
    return {
        "W32": r.standard_normal((16, 32)),  # float64 in, cast to float32
        "W16": r.standard_normal(32),  # -> float16
        "WBF": r.standard_normal(32).astype(np.float32),  # -> bfloat16
        "W64": r.standard_normal(32).astype(np.float32),  # -> float64
    }


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #

def test_array_matches_full_load(src):
    m = load_model(src)
    full = onnx.load(str(src))  # loads external data too
    assert m.path == src.resolve()
    assert m.initializer_names() == ["W32", "B", "W16", "WBF", "W64", "SHAPE"]
    for t in full.graph.initializer:
        expected = numpy_helper.to_array(t)
        got = m.array(t.name)
        assert got.dtype == expected.dtype == m.dtype(t.name)
        assert got.shape == expected.shape == m.shape(t.name)
        assert got.tobytes() == expected.tobytes()
        assert not got.flags.writeable
    assert m.dtype("WBF") == BF16 and m.dtype("W16") == np.float16 and m.dtype("W64") == np.float64
    assert m.dtype("SHAPE") == np.int64
    with pytest.raises(KeyError):
        m.initializer("nope")


def test_external_array_is_memory_mapped(ext_src):
    m = load_model(ext_src)
    assert m.initializer("W32").data_location == TensorProto.EXTERNAL
    a = m.array("W32")
    base = a
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    np.testing.assert_array_equal(a, ORIG["W32"])
    assert external_data_files(m) == {(ext_src.parent / "model.onnx.data").resolve()}


def test_tensor_nbytes():
    assert tensor_nbytes(numpy_helper.from_array(np.zeros((16, 32), np.float32))) == 2048
    assert tensor_nbytes(helper.make_tensor("b", TensorProto.BFLOAT16, [3, 5], np.zeros(15, BF16))) == 30
    assert tensor_nbytes(helper.make_tensor("d", TensorProto.DOUBLE, [4], np.zeros(4))) == 32
    assert tensor_nbytes(TensorProto(data_type=TensorProto.INT4, dims=[5])) == 3  # packed, 2 per byte
    assert tensor_nbytes(TensorProto(data_type=TensorProto.BOOL, dims=[0, 9])) == 0


def test_load_model_errors(tmp_path):
    with pytest.raises(OnnxFileError, match="no such file"):
        load_model(tmp_path / "absent.onnx")
    with pytest.raises(OnnxFileError, match="not an ONNX model"):
        load_model(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff\xff this is not protobuf")
    with pytest.raises(OnnxFileError, match=r"junk\.onnx: not an ONNX model"):
        load_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(OnnxFileError, match="not an ONNX model"):
        load_model(empty)


def _set_location(model_path: Path, name: str, location: str) -> None:
    proto = onnx.load(str(model_path), load_external_data=False)
    for t in proto.graph.initializer:
        if t.name == name:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
    onnx.save_model(proto, str(model_path))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "nested_dotdot"])
def test_escaping_location_refused(ext_src, tmp_path, kind):
    data = ext_src.parent / "model.onnx.data"
    outside = tmp_path / "outside.data"
    shutil.copy(data, outside)  # the target exists: refusal is policy, not a missing file
    if kind == "dotdot":
        location = "../outside.data"
    elif kind == "nested_dotdot":
        (ext_src.parent / "sub").mkdir()
        location = "sub/../../outside.data"
    elif kind == "absolute":
        location = str(outside)
    else:
        (ext_src.parent / "link.data").symlink_to(outside)
        location = "link.data"
    _set_location(ext_src, "W32", location)
    m = load_model(ext_src)  # parsing is fine, data access is not
    with pytest.raises(OnnxFileError, match="W32") as ei:
        m.array("W32")
    assert str(ext_src) in str(ei.value) and "\n" not in str(ei.value)
    np.testing.assert_array_equal(m.array("B"), ORIG["B"])  # other tensors still readable
    with pytest.raises(OnnxFileError):
        external_data_files(m)
    with pytest.raises(OnnxFileError):
        save_model(m, tmp_path / "out" / "o.onnx", {})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_symlink_inside_model_dir_allowed(ext_src):
    (ext_src.parent / "alias.data").symlink_to(ext_src.parent / "model.onnx.data")
    _set_location(ext_src, "W32", "alias.data")
    np.testing.assert_array_equal(load_model(ext_src).array("W32"), ORIG["W32"])


def test_missing_data_file_named(ext_src):
    (ext_src.parent / "model.onnx.data").unlink()
    m = load_model(ext_src)
    with pytest.raises(OnnxFileError, match=r"model\.onnx\.data.*not found"):
        m.array("W32")


def test_truncated_data_file(ext_src):
    data = ext_src.parent / "model.onnx.data"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size - 4)
    m = load_model(ext_src)
    last = max(m.initializer_names(),
               key=lambda n: int({e.key: e.value for e in m.initializer(n).external_data}.get("offset", -1)))
    with pytest.raises(OnnxFileError, match="too short"):
        m.array(last)
    np.testing.assert_array_equal(m.array("W32"), ORIG["W32"])  # earlier tensors still whole


def test_declared_shape_mismatch(ext_src, tmp_path):
    proto = onnx.load(str(ext_src), load_external_data=False)
    proto.graph.initializer[0].dims[0] = 17  # W32 now claims 17x32
    onnx.save_model(proto, str(ext_src))
    with pytest.raises(OnnxFileError, match="W32.*2176 bytes.*2048"):
        load_model(ext_src).array("W32")

    inline = build_model()
    inline.graph.initializer[1].raw_data = inline.graph.initializer[1].raw_data[:-4]  # B loses one float
    p = write(inline, tmp_path / "inline" / "m.onnx", False)
    with pytest.raises(OnnxFileError, match="'B'.*raw_data has 124"):
        load_model(p).array("B")


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("external", [None, True, False])
def test_save_new_values_runs_in_ort(src, tmp_path, external):
    assert np.allclose(run_ort(src), reference(ORIG), rtol=2e-3, atol=2e-3)  # sanity of the reference
    m = load_model(src)
    nv = new_values()
    out = save_model(m, tmp_path / "out" / "new.onnx", nv, external_data=external, size_threshold=100)
    assert out == (tmp_path / "out" / "new.onnx").resolve()
    cast = {**ORIG, **{k: np.asarray(v).astype(ORIG[k].dtype) for k, v in nv.items()}}
    got = run_ort(out)
    assert got.dtype == np.float64 and got.shape == (64,)
    np.testing.assert_allclose(got, reference(cast), rtol=2e-3, atol=2e-3)
    assert not np.allclose(got, reference(ORIG), rtol=1e-2, atol=1e-2)

    m2 = load_model(out)
    assert m2.initializer_names() == m.initializer_names()
    for name, expected in cast.items():
        a = m2.array(name)
        assert a.dtype == expected.dtype and a.tobytes() == expected.tobytes(), name
    onnx.checker.check_model(str(out))
    data = out.parent / "new.onnx.data"
    want_external = external if external is not None else src.with_name("model.onnx.data").exists()
    assert data.exists() == want_external
    w32 = m2.initializer("W32")
    assert (w32.data_location == TensorProto.EXTERNAL) == want_external
    if want_external:
        assert {e.key: e.value for e in w32.external_data}["location"] == "new.onnx.data"
        assert int({e.key: e.value for e in w32.external_data}["offset"]) % 64 == 0
        # below size_threshold stays inline
        assert m2.initializer("SHAPE").data_location != TensorProto.EXTERNAL


def test_other_fields_preserved(src, tmp_path):
    m = load_model(src)
    before = strip_initializers(m.proto)
    out = save_model(m, tmp_path / "o.onnx", new_values())
    saved = onnx.load(str(out), load_external_data=False)
    assert strip_initializers(saved) == before
    assert saved.ir_version == 10 and saved.producer_name == "front-test" and saved.model_version == 7
    assert [(p.key, p.value) for p in saved.metadata_props] == [("author", "tests"), ("license", "none")]
    assert saved.functions[0].name == "Twice"
    assert saved.graph.node[0].metadata_props[0].value == "layer0"
    assert [t.name for t in saved.graph.initializer] == m.initializer_names()
    assert saved.graph.initializer[0].doc_string == "the matmul weight"
    # unchanged initializers keep their bytes
    assert load_model(out).array("B").tobytes() == ORIG["B"].tobytes()
    assert load_model(out).array("SHAPE").tobytes() == ORIG["SHAPE"].tobytes()


def test_unchanged_inline_tensors_kept_verbatim(tmp_path):
    src = write(build_model(), tmp_path / "m.onnx", False)
    m = load_model(src)
    out = save_model(m, tmp_path / "o.onnx", {"W32": np.zeros((16, 32))})
    saved = onnx.load(str(out))
    for name in ("B", "W16", "WBF", "W64", "SHAPE"):  # typed fields stay typed fields
        assert saved.graph.initializer[m.initializer_names().index(name)] == m.initializer(name)


def test_inputs_untouched(src, tmp_path):
    before = snapshot(src.parent)
    m = load_model(src)
    save_model(m, tmp_path / "out" / "o.onnx", new_values(), external_data=True)
    save_model(m, tmp_path / "out" / "p.onnx", {}, external_data=False)
    assert snapshot(src.parent) == before


def test_deterministic(src, tmp_path):
    m = load_model(src)
    (tmp_path / "a").mkdir()
    a = save_model(m, tmp_path / "a" / "o.onnx", new_values(), external_data=True, size_threshold=0)
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = save_model(load_model(src), b_dir / "o.onnx", new_values(), external_data=True, size_threshold=0)
    assert snapshot(a.parent).keys() == snapshot(b.parent).keys() == {"o.onnx", "o.onnx.data"}
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "o.onnx.data").read_bytes() == (b.parent / "o.onnx.data").read_bytes()
    first = a.read_bytes()
    save_model(m, a, new_values(), external_data=True, size_threshold=0)  # overwrite: same bytes
    assert a.read_bytes() == first


def test_external_forced_from_inline_and_back(tmp_path):
    src = write(build_model(), tmp_path / "m.onnx", False)
    # threshold 16: SHAPE (8 bytes) stays inline, as onnxruntime's shape inference needs it inline
    ext = save_model(load_model(src), tmp_path / "e" / "ext.onnx", {}, external_data=True, size_threshold=16)
    m = load_model(ext)
    for name in m.initializer_names():  # typed-field tensors too
        t = m.initializer(name)
        assert (t.data_location == TensorProto.EXTERNAL) == (name != "SHAPE"), name
        assert m.array(name).tobytes() == ORIG[name].tobytes(), name
    np.testing.assert_allclose(run_ort(ext), reference(ORIG), rtol=2e-3, atol=2e-3)

    back = save_model(m, tmp_path / "i" / "inl.onnx", {}, external_data=False)
    assert sorted(p.name for p in back.parent.iterdir()) == ["inl.onnx"]
    mb = load_model(back)
    assert all(mb.initializer(n).data_location != TensorProto.EXTERNAL for n in mb.initializer_names())
    np.testing.assert_allclose(run_ort(back), reference(ORIG), rtol=2e-3, atol=2e-3)


def test_new_value_checks(src, tmp_path):
    m = load_model(src)
    with pytest.raises(ValueError, match="shape"):
        save_model(m, tmp_path / "o.onnx", {"W32": np.zeros((32, 16))})
    with pytest.raises(KeyError):
        save_model(m, tmp_path / "o.onnx", {"nope": np.zeros(3)})
    with pytest.raises(ValueError, match="exactly"):
        save_model(m, tmp_path / "o.onnx", {"SHAPE": np.array([-1.5])})
    out = save_model(m, tmp_path / "o.onnx", {"SHAPE": np.array([-1.0])})  # exact float -> int64 is fine
    assert load_model(out).array("SHAPE").tolist() == [-1]
    expected = ["o.onnx", "o.onnx.data"] if src.with_name("model.onnx.data").exists() else ["o.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == expected


def test_bf16_roundtrip(tmp_path):
    src = write(build_model(), tmp_path / "m.onnx", True)
    m = load_model(src)
    a = m.array("WBF")
    assert a.dtype == BF16
    assert a.view(np.uint16).tobytes() == ORIG["WBF"].view(np.uint16).tobytes()
    v = np.linspace(-3, 3, 32, dtype=np.float32) + np.float32(1e-3)  # not exactly representable
    out = save_model(m, tmp_path / "o.onnx", {"WBF": v}, size_threshold=0)
    got = load_model(out).array("WBF")
    assert got.dtype == BF16
    expected = v.astype(ml_dtypes.bfloat16)  # round to nearest even
    assert got.view(np.uint16).tolist() == expected.view(np.uint16).tolist()
    assert not np.array_equal(got.astype(np.float32), v)
    # unchanged round trip through save keeps the bits
    again = save_model(load_model(out), tmp_path / "p.onnx", {}, external_data=False)
    assert load_model(again).array("WBF").view(np.uint16).tolist() == expected.view(np.uint16).tolist()
    # bf16 value given as bf16 goes through untouched
    out3 = save_model(m, tmp_path / "q.onnx", {"WBF": expected})
    assert load_model(out3).array("WBF").tobytes() == expected.tobytes()


def test_split_shared_initializer(src, tmp_path):
    m = load_model(src)
    add_node = [n.name for n in m.proto.graph.node].index("add_b")
    mul_node = [n.name for n in m.proto.graph.node].index("mul_b")
    b_add = np.linspace(-1, 1, 32)
    b_mul = np.linspace(2, 3, 32)
    out = save_model(
        m, tmp_path / "split.onnx", {},
        add_initializers={"B__0": (b_add, np.float32), "B__1": (b_mul, TensorProto.FLOAT)},
        rewire={(add_node, 1): "B__0", (mul_node, 1): "B__1"},
    )
    m2 = load_model(out)
    assert m2.initializer_names() == ["W32", "W16", "WBF", "W64", "SHAPE", "B__0", "B__1"]
    assert m2.dtype("B__0") == np.float32 and m2.shape("B__1") == (32,)
    assert list(m2.proto.graph.node[add_node].input) == ["Y1", "B__0"]
    assert list(m2.proto.graph.node[mul_node].input) == ["A", "B__1"]
    onnx.checker.check_model(str(out))
    got = run_ort(out)
    np.testing.assert_allclose(
        got, reference(ORIG, b_add.astype(np.float32), b_mul.astype(np.float32)), rtol=2e-3, atol=2e-3)
    assert m.initializer_names()[1] == "B"  # input model object untouched

    # Partial split: B still used by the Mul, so it stays.
    out2 = save_model(m, tmp_path / "half.onnx", {},
                      add_initializers={"B__0": (b_add, np.float32)}, rewire={(add_node, 1): "B__0"})
    assert load_model(out2).initializer_names() == ["W32", "B", "W16", "WBF", "W64", "SHAPE", "B__0"]
    np.testing.assert_allclose(
        run_ort(out2), reference(ORIG, b_add.astype(np.float32), ORIG["B"]), rtol=2e-3, atol=2e-3)


def test_split_checks(src, tmp_path):
    m = load_model(src)
    with pytest.raises(ValueError, match="already used"):
        save_model(m, tmp_path / "o.onnx", {}, add_initializers={"W32": (np.zeros(1), np.float32)})
    with pytest.raises(ValueError, match="no input"):
        save_model(m, tmp_path / "o.onnx", {}, rewire={(99, 0): "B"})
    with pytest.raises(ValueError, match="not an initializer"):
        save_model(m, tmp_path / "o.onnx", {}, rewire={(1, 1): "ghost"})
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["in"]


def test_initializer_also_graph_input_dropped_with_its_input(tmp_path):
    model = build_model()
    model.graph.input.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, [32]))  # IR<4 style
    src = write(model, tmp_path / "m.onnx", False)
    m = load_model(src)
    out = save_model(m, tmp_path / "o.onnx", {},
                     add_initializers={"B1": (ORIG["B"], np.float32), "B2": (ORIG["B"], np.float32)},
                     rewire={(1, 1): "B1", (2, 1): "B2"})
    saved = onnx.load(str(out))
    assert [i.name for i in saved.graph.input] == ["X"]
    np.testing.assert_allclose(run_ort(out), reference(ORIG), rtol=2e-3, atol=2e-3)


def test_refuse_writing_onto_input(ext_src, tmp_path):
    m = load_model(ext_src)
    before = snapshot(ext_src.parent)
    with pytest.raises(OutputRefused, match="would overwrite the input"):
        save_model(m, ext_src, new_values())
    link = tmp_path / "alias.onnx"
    link.symlink_to(ext_src)
    with pytest.raises(OutputRefused, match="would overwrite the input"):
        save_model(m, link, new_values())
    # an output whose data file would be the input's data file
    other = write(build_model(), tmp_path / "d" / "model.onnx", True, location="out.onnx.data")
    with pytest.raises(OutputRefused, match="would overwrite the input"):
        save_model(load_model(other), other.parent / "out.onnx", {})
    with pytest.raises(OutputRefused, match="would overwrite the input"):  # output .onnx onto the input's data file
        save_model(m, ext_src.parent / "model.onnx.data", {})
    assert snapshot(ext_src.parent) == before


@pytest.mark.parametrize("where", ["data_write", "replace", "serialize"])
def test_failure_mid_write_leaves_nothing(ext_src, tmp_path, monkeypatch, where):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        raise OSError("disk on fire")

    if where == "data_write":
        real = onnx_io._DataWriter.write

        def write_then_fail(self, *a):
            if calls["n"]:
                raise OSError("disk on fire")
            calls["n"] += 1
            return real(self, *a)
        monkeypatch.setattr(onnx_io._DataWriter, "write", write_then_fail)
    elif where == "replace":
        monkeypatch.setattr(onnx_io.os, "replace", boom)
    else:
        monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    with pytest.raises(OSError, match="disk on fire"):
        save_model(load_model(ext_src), out_dir / "o.onnx", new_values(), size_threshold=0)
    assert calls["n"] >= 1
    assert list(out_dir.iterdir()) == []


def test_failure_keeps_previous_output(ext_src, tmp_path, monkeypatch):
    out = save_model(load_model(ext_src), tmp_path / "o.onnx", {})
    before = snapshot(tmp_path)
    def fail(*a):
        raise RuntimeError("x")
    monkeypatch.setattr(onnx_io._DataWriter, "copy", fail)
    monkeypatch.setattr(onnx_io._DataWriter, "write", fail)
    with pytest.raises(RuntimeError):
        save_model(load_model(ext_src), out, new_values())
    assert snapshot(tmp_path) == before


def test_subgraph_external_tensor_rehomed(tmp_path):
    """An external tensor inside an If branch is carried into the new data file."""
    c = np.arange(64, dtype=np.float32)
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(c, "cval"))],
        "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [64])])
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["W"], ["e"])],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [64])])
    graph = helper.make_graph(
        [helper.make_node("If", ["C"], ["Y"], then_branch=then_g, else_branch=else_g)], "g",
        [helper.make_tensor_value_info("C", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [64])],
        initializer=[numpy_helper.from_array(-c, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    d = tmp_path / "src"
    d.mkdir()
    onnx.save_model(model, str(d / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0, convert_attribute=True)
    m = load_model(d / "m.onnx")
    assert len(external_data_files(m)) == 1
    out = save_model(m, tmp_path / "o" / "o.onnx", {"W": c * 2})
    shutil.rmtree(d)  # the output must not depend on the source files any more
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"C": np.array(True)})[0], c)
    np.testing.assert_array_equal(sess.run(None, {"C": np.array(False)})[0], -2 * c)


def test_torch_dynamo_export(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import contextlib
    import io
    import warnings
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    p = tmp_path / "t" / "net.onnx"
    p.parent.mkdir()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(p), dynamo=True, input_names=["x"], output_names=["y"])
    m = load_model(p)
    names = m.initializer_names()
    new = {n: np.asarray(m.array(n)) * 0.5 for n in names if m.dtype(n) == np.float32}
    assert new
    out = save_model(m, tmp_path / "o" / "half.onnx", new)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight *= 0.5
                mod.bias *= 0.5
        expected = net(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from([np.float32, np.float16, BF16, np.float64, np.int64, np.int32, np.int8, np.bool_]),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    external=st.booleans(),
    threshold=st.sampled_from([0, 8, 1024]),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_property(tmp_path_factory, dtype, shape, external, threshold, seed):
    d = tmp_path_factory.mktemp("prop")
    r = np.random.default_rng(seed)
    orig = (r.standard_normal(shape) * 10).astype(dtype)
    new = (r.standard_normal(shape) * 10).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["P"], ["Y"])], "g", [],
        [helper.make_tensor_value_info("Y", elem, list(shape))],
        initializer=[numpy_helper.from_array(orig, "P"), numpy_helper.from_array(orig, "Q")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    src = write(model, d / "in" / "m.onnx", external)
    m = load_model(src)
    assert m.array("P").tobytes() == orig.tobytes()
    out = save_model(m, d / "o.onnx", {"P": new}, external_data=not external, size_threshold=threshold)
    m2 = load_model(out)
    assert m2.array("P").dtype == np.dtype(dtype) and m2.array("P").shape == shape
    assert m2.array("P").tobytes() == new.tobytes()
    assert m2.array("Q").tobytes() == orig.tobytes()
    full = onnx.load(str(out))
    assert numpy_helper.to_array(full.graph.initializer[0]).tobytes() == new.tobytes()


def test_copy_without_copy_file_range(ext_src, tmp_path, monkeypatch):
    """Unchanged external tensors are copied byte for byte by the read/write fallback too."""
    def unsupported(*a, **k):
        raise OSError(18, "Invalid cross-device link")  # EXDEV
    monkeypatch.setattr(onnx_io.os, "copy_file_range", unsupported, raising=False)
    m = load_model(ext_src)
    out = save_model(m, tmp_path / "o.onnx", {}, size_threshold=0)
    m2 = load_model(out)
    for name in m.initializer_names():
        assert m2.array(name).tobytes() == m.array(name).tobytes(), name
    assert m2.initializer("B").data_location == TensorProto.EXTERNAL


def test_memory_mapped_arrays_as_new_values(ext_src, tmp_path):
    """Arrays read from one model (read-only memmaps) can be written into another."""
    donor = write(build_model(), tmp_path / "donor" / "d.onnx", True)
    d = load_model(donor)
    nv = {"W32": d.array("W32")[::-1], "B": d.array("B")}  # a non-contiguous view and a plain memmap
    out = save_model(load_model(ext_src), tmp_path / "o.onnx", nv)
    m2 = load_model(out)
    assert m2.array("W32").tobytes() == np.ascontiguousarray(ORIG["W32"][::-1]).tobytes()
    assert m2.array("B").tobytes() == ORIG["B"].tobytes()
