"""ONNX export: equality with PyTorch, contract (signature + metadata), symmetries."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import fastfeat
from fastfeat.train.export import export_onnx, model_to_onnx, read_metadata

from ._helpers import random_features, random_model, random_rotation, small_spec

NP = {"float32": np.float32, "float64": np.float64}
TORCH = {"float32": torch.float32, "float64": torch.float64}


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, g, v, s, dtype):
    return sess.run(["forces"], {"invariant": np.asarray(g, NP[dtype]), "covariant": np.asarray(v, NP[dtype]),
                                 "species": np.asarray(s, np.int64)})[0]


def _torch(model, g, v, s, dtype):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(g, NP[dtype])), torch.tensor(np.asarray(v, NP[dtype])),
                     torch.tensor(np.asarray(s, np.int64))).numpy()


@pytest.mark.parametrize("gram", [True, False])
@pytest.mark.parametrize("activation", ["silu", "tanh"])
@pytest.mark.parametrize("head", ["projection", "basis"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onnxruntime_equals_pytorch(head, dtype, activation, gram):
    spec = small_spec(("H", "Li", "O"))
    model = random_model(spec, head=head, dtype=TORCH[dtype], activation=activation, gram=gram)
    proto = model_to_onnx(model, dtype=dtype)
    sess = _session(proto)
    fs = random_features(spec, 6, np.random.default_rng(10))
    f_ort = _run(sess, fs.invariant, fs.covariant, fs.species, dtype)
    f_torch = _torch(model, fs.invariant, fs.covariant, fs.species, dtype)
    assert f_ort.dtype == NP[dtype] and f_ort.shape == (fs.n_atoms, 3)
    tol = 1e-5 if dtype == "float32" else 1e-12
    rel = np.abs(f_ort - f_torch).max() / np.abs(f_torch).max()
    assert rel <= tol, f"max rel deviation {rel:.2e} > {tol:g}"


def test_signature_and_metadata_follow_the_contract(tmp_path):
    spec = small_spec(("C", "H", "O"))
    model = random_model(spec)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, data_hash="ab" * 32, validation={"val": {"mae": 0.1}})
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    ins = {i.name: i for i in proto.graph.input}
    assert list(ins) == ["invariant", "covariant", "species"]

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    assert dims(ins["invariant"]) == ["n_atoms", spec.n_invariant]
    assert dims(ins["covariant"]) == ["n_atoms", spec.n_covariant, 3]
    assert dims(ins["species"]) == ["n_atoms"]
    assert ins["invariant"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert ins["species"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    (out,) = proto.graph.output
    assert out.name == "forces" and dims(out) == ["n_atoms", 3]
    meta = read_metadata(path)
    assert set(meta) == {"fastfeat.format_version", "fastfeat.spec", "fastfeat.species", "fastfeat.head",
                         "fastfeat.target", "fastfeat.units", "fastfeat.version", "fastfeat.data_hash",
                         "fastfeat.validation", "fastfeat.dtype"}
    assert meta["fastfeat.format_version"] == "1"
    assert fastfeat.FeatureSpec.from_json(meta["fastfeat.spec"]) == spec
    assert meta["fastfeat.spec"] == spec.to_json()
    assert json.loads(meta["fastfeat.species"]) == ["C", "H", "O"]
    assert meta["fastfeat.head"] == "projection"
    assert meta["fastfeat.target"] == "forces"
    assert json.loads(meta["fastfeat.units"]) == {"length": "Å", "force": "eV/Å"}
    assert meta["fastfeat.version"] == fastfeat.__version__
    assert meta["fastfeat.data_hash"] == "ab" * 32
    assert json.loads(meta["fastfeat.validation"]) == {"val": {"mae": 0.1}}
    assert meta["fastfeat.dtype"] == "float32"
    # onnxruntime sees the same metadata
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["fastfeat.head"] == "projection"


def test_float64_export_types():
    model = random_model(small_spec(), dtype=torch.float64)
    proto = model_to_onnx(model, dtype="float64")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(proto.graph.input) + list(proto.graph.output)}
    assert types == {"invariant": onnx.TensorProto.DOUBLE, "covariant": onnx.TensorProto.DOUBLE,
                     "species": onnx.TensorProto.INT64, "forces": onnx.TensorProto.DOUBLE}
    assert {m.key: m.value for m in proto.metadata_props}["fastfeat.dtype"] == "float64"


@pytest.mark.parametrize("gram", [True, False])
def test_per_element_dispatch_in_graph(gram):
    # each element: NonZero -> Gather rows -> its own MLP -> ScatterND; no MLP sees all atoms
    spec = small_spec(("H", "Li", "O", "P"))
    proto = model_to_onnx(random_model(spec, hidden=(16, 16), gram=gram))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("NonZero") == 4 and ops.count("ScatterND") == 4
    row_gathers = [n for n in proto.graph.node if n.op_type == "Gather"
                   and any(a.name == "axis" and a.i == 0 for a in n.attribute)]
    net_in = {n.input[0] for n in row_gathers}
    assert len(row_gathers) == 4 and len(net_in) == 1
    assert net_in == ({"net_in_" + n.output[0].split("_")[-1] for n in proto.graph.node if n.op_type == "Concat"
                       and n.output[0].startswith("net_in")} if gram else {"invariant"})
    # MLP MatMuls consume gathered rows, never the full network input
    (full,) = net_in
    assert not any(n.op_type == "MatMul" and full in n.input for n in proto.graph.node)
    # 3 layers per element + the row sums of the head (+ the Gram matrix); the head's entries of VᵀV
    # and Vᵀp are row dot products of the three components: no batched MatMul there
    assert ops.count("MatMul") == 4 * 3 + 1 + int(gram)
    assert ops.count("ReduceSum") == 9


@pytest.mark.parametrize("head", ["projection", "basis"])
def test_dynamic_atom_count_and_missing_elements(head):
    spec = small_spec(("H", "Li", "O"))
    model = random_model(spec, head=head)
    sess = _session(model_to_onnx(model))
    rng = np.random.default_rng(11)
    for n, species in [(0, []), (1, [2]), (7, [0] * 7), (33, rng.integers(0, 3, 33))]:
        g = rng.random((n, spec.n_invariant))
        v = rng.normal(size=(n, spec.n_covariant, 3))
        f = _run(sess, g, v, species, "float32")
        assert f.shape == (n, 3)
        if n:
            np.testing.assert_allclose(f, _torch(model, g, v, species, "float32"), rtol=1e-5,
                                       atol=1e-5 * np.abs(f).max())


@pytest.mark.parametrize("head", ["projection", "basis"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exported_model_rotation_covariance(head, dtype):
    spec = small_spec()
    model = random_model(spec, head=head, dtype=TORCH[dtype])
    sess = _session(model_to_onnx(model, dtype=dtype))
    fs = random_features(spec, 5, np.random.default_rng(12))
    g, v = fs.invariant.astype(np.float64), fs.covariant.astype(np.float64)
    f = _run(sess, g, v, fs.species, dtype).astype(np.float64)
    rng = np.random.default_rng(13)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for _ in range(10):
        rot = random_rotation(rng)
        fr = _run(sess, g, v @ rot.T, fs.species, dtype).astype(np.float64)
        err = np.abs(fr - f @ rot.T).max() / np.abs(f).max()
        assert err <= tol, f"rotation covariance violated ({err:.2e} > {tol:g}) for rotation {rot.tolist()}"


def test_exported_model_permutation_equivariance():
    spec = small_spec(("H", "Li", "O"))
    sess = _session(model_to_onnx(random_model(spec)))
    fs = random_features(spec, 3, np.random.default_rng(14))
    f = _run(sess, fs.invariant, fs.covariant, fs.species, "float32")
    perm = np.random.default_rng(15).permutation(fs.n_atoms)
    fp = _run(sess, fs.invariant[perm], fs.covariant[perm], fs.species[perm], "float32")
    np.testing.assert_allclose(fp, f[perm], rtol=1e-6, atol=1e-7, err_msg=f"permutation {perm.tolist()}")


def test_model_to_onnx_rejects_bad_arguments():
    with pytest.raises(TypeError, match="`model`"):
        model_to_onnx(object())
    with pytest.raises(ValueError, match="`dtype`"):
        model_to_onnx(random_model(small_spec()), dtype="float16")
