"""Export a trained :class:`~fastfeat.train.model.StaggeredNetwork` to ONNX.

The graph is written node by node with :mod:`onnx.helper` from the trained
weights (no dependency on ``torch.onnx``). It performs exactly the PyTorch
arithmetic:

* network inputs: the invariants, and (``gram``) the Gram entries
  ``V_k·V_l`` (k <= l) of the covariant input (``MatMul`` + ``Gather``), concatenated;
* per element ``e``: ``NonZero(species == e)`` -> ``Gather`` the rows of the
  inputs -> standardise ``(G - mean_e) * (1/std_e)`` -> soft clip ``c·tanh(z/c)`` -> MLP (``MatMul`` +
  ``Add`` + SiLU/Tanh) -> ``* output_scale_e`` -> ``ScatterND`` into the
  (n_atoms, K) output, so each atom runs through its own element's network
  only;
* the head: ``basis`` ``F = Σ_k c_k V_k``; ``projection``
  ``A = VᵀV + εI`` (ε relative to the trace), ``b = Vᵀp`` and ``F = adj(A) b / det(A)``
  written out entry by entry.

Model contract (``model_format`` 1)
-----------------------------------
Inputs ``invariant`` [n_atoms, n_invariant], ``covariant`` [n_atoms, n_covariant, 3]
(float32, or float64 in a float64 export), ``species`` int64 [n_atoms] (index
into the spec's species); output ``forces`` [n_atoms, 3]. ``n_atoms`` is a
dynamic dimension. ``metadata_props``: ``fastfeat.format_version``,
``fastfeat.spec``, ``fastfeat.species``, ``fastfeat.head``, ``fastfeat.target``,
``fastfeat.units``, ``fastfeat.version``, ``fastfeat.data_hash``,
``fastfeat.validation``, ``fastfeat.dtype`` (all strings).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import fastfeat

from .model import StaggeredNetwork

__all__ = ["export_onnx", "model_to_onnx", "FORMAT_VERSION", "OPSET", "read_metadata"]

FORMAT_VERSION = "1"
OPSET = 17
IR_VERSION = 8


class _Builder:
    """Tiny helper: unique names, initializers and nodes of one graph."""

    def __init__(self, np_dtype):
        self.np_dtype = np.dtype(np_dtype)
        self.nodes, self.inits = [], []
        self._n = 0

    def name(self, stem):
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem, value, dtype=None):
        arr = np.asarray(value, dtype=self.np_dtype if dtype is None else dtype)
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type, inputs, stem=None, n_out=1, **attrs):
        outs = [self.name(stem or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs


def _activation(b: _Builder, x: str, activation: str) -> str:
    if activation == "silu":
        return b.op("Mul", [x, b.op("Sigmoid", [x])], "silu")
    if activation == "tanh":
        return b.op("Tanh", [x])
    raise ValueError(f"unsupported activation {activation!r}")


def _network_inputs(b: _Builder, model: StaggeredNetwork, inv: str, cov: str) -> str:
    """The invariants, then (``model.gram``) the Gram entries V_k·V_l (k <= l) -> (n, n_inputs)."""
    if not model.gram:
        return inv
    k = model.spec.n_covariant
    vt = b.op("Transpose", [cov], "vt_gram", perm=[0, 2, 1])                   # (n, 3, K)
    gram = b.op("MatMul", [cov, vt], "gram_kk")                                # (n, K, K)
    flat = b.op("Reshape", [gram, b.const("shape_nkk", [-1, k * k], np.int64)], "gram_flat")
    upper = b.op("Gather", [flat, b.const("gram_index", model.gram_index.cpu().numpy(), np.int64)], "gram", axis=1)
    return b.op("Concat", [inv, upper], "net_in", axis=1)


def _element_network(b: _Builder, model: StaggeredNetwork, e: int, inv: str, species: str, acc: str) -> str:
    """Nodes of element e's MLP on its own atoms; returns the updated accumulator."""
    dt = b.np_dtype
    mask = b.op("Equal", [species, b.const(f"e{e}", np.int64(e), np.int64)], f"is_e{e}")
    nz = b.op("NonZero", [mask], f"nz_e{e}")                       # (1, m)
    idx_m1 = b.op("Transpose", [nz], f"idx_e{e}", perm=[1, 0])     # (m, 1)
    idx_m = b.op("Reshape", [nz, b.const("flat", [-1], np.int64)], f"rows_e{e}")
    g = b.op("Gather", [inv, idx_m], f"g_e{e}", axis=0)
    mean = model.feature_mean[e].detach().cpu().numpy().astype(dt)
    inv_std = (1.0 / model.feature_std[e]).detach().cpu().numpy().astype(dt)
    x = b.op("Mul", [b.op("Sub", [g, b.const(f"mean_e{e}", mean)]), b.const(f"invstd_e{e}", inv_std)], f"x_e{e}")
    if model.input_clip:
        c = model.input_clip
        x = b.op("Mul", [b.op("Tanh", [b.op("Mul", [x, b.const("inv_clip", 1.0 / c)])]), b.const("clip", c)], f"xc_e{e}")
    linears = [m for m in model.nets[e] if isinstance(m, torch.nn.Linear)]
    for li, lin in enumerate(linears):
        w = lin.weight.detach().cpu().numpy().T.astype(dt)
        bias = lin.bias.detach().cpu().numpy().astype(dt)
        x = b.op("Add", [b.op("MatMul", [x, b.const(f"w{li}_e{e}", w)]), b.const(f"b{li}_e{e}", bias)], f"h{li}_e{e}")
        if li < len(linears) - 1:
            x = _activation(b, x, model.activation)
    scale = model.output_scale[e].detach().cpu().numpy().astype(dt)
    y = b.op("Mul", [x, b.const(f"scale_e{e}", scale)], f"out_e{e}")
    return b.op("ScatterND", [acc, idx_m1, y], f"acc_e{e}")


def _projection_head(b: _Builder, model: StaggeredNetwork, p: str, cov: str) -> str:
    vt = b.op("Transpose", [cov], "vt", perm=[0, 2, 1])                       # (n, 3, K)
    a33 = b.op("MatMul", [vt, cov], "a33")                                     # (n, 3, 3)
    p1k = b.op("Unsqueeze", [p, b.const("ax1", [1], np.int64)], "p1k")         # (n, 1, K)
    b13 = b.op("MatMul", [p1k, cov], "b13")                                    # (n, 1, 3)
    bvec = b.op("Reshape", [b13, b.const("shape_n3", [-1, 3], np.int64)], "b")
    a9 = b.op("Reshape", [a33, b.const("shape_n9", [-1, 9], np.int64)], "a9")
    a = b.op("Split", [a9, b.const("split9", [1] * 9, np.int64)], "a", n_out=9, axis=1)   # 9 x (n, 1)
    bb = b.op("Split", [bvec, b.const("split3", [1] * 3, np.int64)], "bc", n_out=3, axis=1)
    trace = b.op("Add", [b.op("Add", [a[0], a[4]]), a[8]], "trace")
    eps = b.op("Add", [b.op("Mul", [trace, b.const("eps_rel3", model.eps_rel / 3.0)]),
                       b.const("eps_abs", model.eps_abs)], "eps")
    a = list(a)
    for d in (0, 4, 8):
        a[d] = b.op("Add", [a[d], eps], f"a{d}_reg")
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = a

    def mul(x, y):
        return b.op("Mul", [x, y])

    def sub(x, y):
        return b.op("Sub", [x, y])

    def add(x, y):
        return b.op("Add", [x, y])

    c00 = sub(mul(a11, a22), mul(a12, a21))
    c01 = sub(mul(a12, a20), mul(a10, a22))
    c02 = sub(mul(a10, a21), mul(a11, a20))
    c10 = sub(mul(a02, a21), mul(a01, a22))
    c11 = sub(mul(a00, a22), mul(a02, a20))
    c12 = sub(mul(a01, a20), mul(a00, a21))
    c20 = sub(mul(a01, a12), mul(a02, a11))
    c21 = sub(mul(a02, a10), mul(a00, a12))
    c22 = sub(mul(a00, a11), mul(a01, a10))
    det = add(add(mul(a00, c00), mul(a01, c01)), mul(a02, c02))
    b0, b1, b2 = bb
    x0 = b.op("Div", [add(add(mul(c00, b0), mul(c10, b1)), mul(c20, b2)), det])
    x1 = b.op("Div", [add(add(mul(c01, b0), mul(c11, b1)), mul(c21, b2)), det])
    x2 = b.op("Div", [add(add(mul(c02, b0), mul(c12, b1)), mul(c22, b2)), det])
    return b.op("Concat", [x0, x1, x2], "forces_cat", axis=1)


def _basis_head(b: _Builder, c: str, cov: str) -> str:
    c1k = b.op("Unsqueeze", [c, b.const("ax1", [1], np.int64)], "c1k")
    f13 = b.op("MatMul", [c1k, cov], "f13")
    return b.op("Reshape", [f13, b.const("shape_n3", [-1, 3], np.int64)], "forces_flat")


def model_to_onnx(model: StaggeredNetwork, *, target="forces", units=None, data_hash="", validation=None,
                  dtype="float32", name="fastfeat_staggered") -> onnx.ModelProto:
    """Build the ONNX graph of a trained network (see module docstring).

    Parameters
    ----------
    model : StaggeredNetwork
    target : str
        Name of the learned per-atom covariant quantity ("forces").
    units : dict, optional
        ``{"length": "Å", "force": "eV/Å"}`` by default.
    data_hash : str
        sha256 of the training data.
    validation : dict, optional
        Validation/test metrics stored as JSON.
    dtype : {"float32", "float64"}
        Floating type of inputs, weights and output.

    Returns
    -------
    onnx.ModelProto
        Checked with :func:`onnx.checker.check_model`.
    """
    if not isinstance(model, StaggeredNetwork):
        raise TypeError(f"`model` must be a StaggeredNetwork, got {type(model).__name__}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"`dtype` must be 'float32' or 'float64', got {dtype!r}")
    np_dt = np.float32 if dtype == "float32" else np.float64
    tp = TensorProto.FLOAT if dtype == "float32" else TensorProto.DOUBLE
    spec = model.spec
    n_f, n_k = spec.n_invariant, spec.n_covariant
    b = _Builder(np_dt)
    inputs = [
        helper.make_tensor_value_info("invariant", tp, ["n_atoms", n_f]),
        helper.make_tensor_value_info("covariant", tp, ["n_atoms", n_k, 3]),
        helper.make_tensor_value_info("species", TensorProto.INT64, ["n_atoms"]),
    ]
    outputs = [helper.make_tensor_value_info("forces", tp, ["n_atoms", 3])]
    shape = b.op("Shape", ["invariant"], "shape_inv")
    n1 = b.op("Slice", [shape, b.const("s0", [0], np.int64), b.const("s1", [1], np.int64)], "n1")
    out_shape = b.op("Concat", [n1, b.const("k", [n_k], np.int64)], "out_shape", axis=0)
    acc = b.op("ConstantOfShape", [out_shape], "zeros",
               value=numpy_helper.from_array(np.zeros(1, dtype=np_dt), "zero"))
    net_in = _network_inputs(b, model, "invariant", "covariant")
    for e in range(spec.n_species):
        acc = _element_network(b, model, e, net_in, "species", acc)
    if model.head == "projection":
        f = _projection_head(b, model, acc, "covariant")
    else:
        f = _basis_head(b, acc, "covariant")
    b.nodes.append(helper.make_node("Identity", [f], ["forces"], name="n_forces"))
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastfeat", producer_version=fastfeat.__version__)
    proto.ir_version = IR_VERSION
    if units is None:
        units = {"length": "Å", "force": "eV/Å"}
    meta = {
        "fastfeat.format_version": FORMAT_VERSION,
        "fastfeat.spec": spec.to_json(),
        "fastfeat.species": json.dumps(list(spec.species)),
        "fastfeat.head": model.head,
        "fastfeat.target": str(target),
        "fastfeat.units": json.dumps(units, ensure_ascii=False),
        "fastfeat.version": fastfeat.__version__,
        "fastfeat.data_hash": str(data_hash),
        "fastfeat.validation": json.dumps(validation if validation is not None else {}, sort_keys=True),
        "fastfeat.dtype": dtype,
    }
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: StaggeredNetwork, path, **kwargs) -> onnx.ModelProto:
    """Write :func:`model_to_onnx` ``(model, **kwargs)`` to ``path``; returns the proto."""
    proto = model_to_onnx(model, **kwargs)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return proto


def read_metadata(path) -> dict:
    """The ``fastfeat.*`` metadata of an exported model (a dict of strings)."""
    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
