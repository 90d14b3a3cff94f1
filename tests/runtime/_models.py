"""Small contract-following ONNX models built with onnx.helper (no torch).

The "basis" test model: c_nk = tanh(G_nf W1_fh) W2_hk + B[species_n]_k and
F_n = sum_k c_nk V_nk, exactly rotation-covariant like the real heads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fastfeat.runtime._onnx_meta import make_metadata

__all__ = ["make_basis_model", "reference_forces", "with_metadata"]


def _weights(spec, hidden, seed, scale):
    rng = np.random.default_rng(seed)
    n_inv, k = spec.n_invariant, spec.n_covariant
    w1 = rng.standard_normal((n_inv, hidden)) / np.sqrt(n_inv)
    w2 = scale * rng.standard_normal((hidden, k)) / np.sqrt(hidden)
    b = scale * rng.standard_normal((spec.n_species, k))
    return w1, w2, b


def reference_forces(spec, g_nf, v_nfc, species_n, hidden=8, seed=0, scale=0.5):
    """The test model's forces in float64 NumPy, for comparisons."""
    w1, w2, b = _weights(spec, hidden, seed, scale)
    c_nk = np.tanh(np.asarray(g_nf, np.float64) @ w1) @ w2 + b[np.asarray(species_n)]
    return np.einsum("nk,nkc->nc", c_nk, np.asarray(v_nfc, np.float64))


def make_basis_model(path, spec, *, dtype="float32", hidden=8, seed=0, scale=0.5, metadata=None,
                     drop_metadata=(), input_names=("invariant", "covariant", "species"),
                     output_name="forces", n_invariant=None, fixed_atoms=None):
    """Write a test model to ``path`` and return the path.

    Parameters let tests break the contract: ``metadata`` overrides keys,
    ``drop_metadata`` removes keys, ``input_names``/``output_name`` rename,
    ``n_invariant`` declares a wrong feature width, ``fixed_atoms`` a fixed
    atom dimension instead of the dynamic one.
    """
    dt = np.dtype(dtype)
    elem = TensorProto.FLOAT if dt == np.float32 else TensorProto.DOUBLE
    n_inv = spec.n_invariant if n_invariant is None else n_invariant
    k = spec.n_covariant
    w1, w2, b = _weights(spec, hidden, seed, scale)
    if n_invariant is not None:
        w1 = np.zeros((n_inv, hidden))
    natoms = "n_atoms" if fixed_atoms is None else fixed_atoms
    g_in, v_in, s_in = input_names
    inputs = [
        helper.make_tensor_value_info(g_in, elem, [natoms, n_inv]),
        helper.make_tensor_value_info(v_in, elem, [natoms, k, 3]),
        helper.make_tensor_value_info(s_in, TensorProto.INT64, [natoms]),
    ]
    outputs = [helper.make_tensor_value_info(output_name, elem, [natoms, 3])]
    inits = [
        numpy_helper.from_array(w1.astype(dt), "W1"),
        numpy_helper.from_array(w2.astype(dt), "W2"),
        numpy_helper.from_array(b.astype(dt), "B"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("MatMul", [g_in, "W1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "W2"], ["cg"]),
        helper.make_node("Gather", ["B", s_in], ["cb"], axis=0),
        helper.make_node("Add", ["cg", "cb"], ["c"]),
        helper.make_node("Unsqueeze", ["c", "axis2"], ["c3"]),
        helper.make_node("Mul", ["c3", v_in], ["cv"]),
        helper.make_node("ReduceSum", ["cv", "axis1"], [output_name], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "fastfeat_test_basis", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fastfeat-tests")
    model.ir_version = 8
    meta = make_metadata(spec, head="basis", dtype=dt.name, data_hash="test", validation={"note": "untrained"})
    meta.update(metadata or {})
    for key in drop_metadata:
        meta.pop(key, None)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_metadata(src, dst, **items):
    """Copy the model file ``src`` to ``dst`` with metadata ``fastfeat.<key>`` set to the given strings.

    E.g. ``with_metadata(path, tmp / "dipole.onnx", target="dipole")`` makes what
    ``fastfeat train --target dipole`` exports: same graph, another learned target.
    """
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({f"fastfeat.{key}": str(value) for key, value in items.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst
