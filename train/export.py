"""Export a trained :class:`~fastfeat.train.model.StaggeredNetwork` to ONNX.

The graph is written node by node with :mod:`onnx.helper` from the trained
weights (no dependency on ``torch.onnx``). It performs the PyTorch arithmetic,
with constant factors folded in float64 (equal up to rounding):

* network inputs: the invariants, and (``gram``) the Gram entries
  ``V_k·V_l`` (k <= l) of the covariant input (``MatMul`` + ``GatherElements``), concatenated;
* per element ``e``: ``NonZero(species == e)`` -> ``Gather`` the rows of the
  inputs -> standardise and soft clip, ``c·tanh((G - mean_e) / (std_e·c))``
  (``Sub``, ``Mul``, ``Tanh``; the factor ``c`` is folded into the first layer)
  -> MLP (``MatMul`` + ``Add`` + SiLU/Tanh, ``output_scale_e`` folded into the
  last layer) -> ``ScatterND`` into the (n_atoms, K) output, so each atom runs
  through its own element's network only;
* the head: ``basis`` ``F = Σ_k c_k V_k``; ``projection``
  ``A = VᵀV + εI`` (ε relative to the trace), ``b = Vᵀp`` and
  ``F = adj(A) b / det(A)`` on whole (n_atoms, ·) tensors: the entries of ``A``
  and ``b`` are row dot products of the components of ``V`` (and ``p``), one
  ``Gemm`` regularises ``A`` and picks the factors of its cofactors.

The node count matters: at ~100 atoms onnxruntime's cost per node is a large
part of a call. So does the choice of operator (onnxruntime, CPU): ``Gather``
along axis 1 and ``ReduceSum`` over a middle axis cost several ns per element,
and a batched ``MatMul`` of small (3, K) matrices ~0.2 µs per atom, while
``ReduceSum`` over a contiguous last axis is cheap; hence ``GatherElements``,
``MatMul`` with constant 0/1 matrices, and row dot products of components.

Model contract (``model_format`` 1)
-----------------------------------
Inputs ``invariant`` [n_atoms, n_invariant], ``covariant`` [n_atoms, n_covariant, 3]
(float32, or float64 in a float64 export), ``species`` int64 [n_atoms] (index
into the spec's species); output ``forces`` [n_atoms, 3]. ``n_atoms`` is a
dynamic dimension. ``metadata_props``: ``fastfeat.format_version``,
``fastfeat.spec``, ``fastfeat.species``, ``fastfeat.head``, ``fastfeat.target``,
``fastfeat.units``, ``fastfeat.version``, ``fastfeat.data_hash``,
``fastfeat.validation``, ``fastfeat.dtype`` and, when given, ``fastfeat.feature_range``
(all strings).
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

    def op(self, op_type, inputs, stem=None, n_out=1, out=None, **attrs):
        """Append a node; its outputs are named uniquely after ``stem``, or ``out`` (a graph output)."""
        outs = [out] if out is not None else [self.name(stem or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs


def _f64(t: torch.Tensor) -> np.ndarray:
    """A weight or buffer as a float64 array (constants are folded in float64, rounded once)."""
    return t.detach().cpu().double().numpy()


def _activation(b: _Builder, x: str, activation: str) -> str:
    if activation == "silu":
        return b.op("Mul", [x, b.op("Sigmoid", [x])], "silu")
    if activation == "tanh":
        return b.op("Tanh", [x])
    raise ValueError(f"unsupported activation {activation!r}")


def _network_inputs(b: _Builder, model: StaggeredNetwork, inv: str, cov: str, n1: str) -> str:
    """The invariants, then (``model.gram``) the Gram entries V_k·V_l (k <= l) -> (n, n_inputs).

    ``n1`` is the shape ``[n, 1]``. The upper triangle is picked with
    ``GatherElements`` (indices broadcast to ``(n, K(K+1)/2)``): onnxruntime's
    ``Gather`` along axis 1 took about half the time of a whole call.
    """
    if not model.gram:
        return inv
    k = model.spec.n_covariant
    vt = b.op("Transpose", [cov], "vt_gram", perm=[0, 2, 1])                   # (n, 3, K)
    gram = b.op("MatMul", [cov, vt], "gram_kk")                                # (n, K, K)
    flat = b.op("Reshape", [gram, b.const("shape_nkk", [-1, k * k], np.int64)], "gram_flat")
    index = b.op("Expand", [b.const("gram_index", model.gram_index.cpu().numpy()[None], np.int32), n1], "gram_index_n")
    upper = b.op("GatherElements", [flat, index], "gram", axis=1)
    return b.op("Concat", [inv, upper], "net_in", axis=1)


def _element_network(b: _Builder, model: StaggeredNetwork, e: int, inv: str, species: str, acc: str) -> str:
    """Nodes of element e's MLP on its own atoms; returns the updated accumulator.

    The affine steps of the PyTorch forward are folded into as few nodes as
    possible: standardisation and the ``1/c`` of the soft clip are one ``Sub``
    + ``Mul``, the factor ``c`` after the ``Tanh`` is folded into the first
    weight matrix and the output scale into the last layer.
    """
    dt = b.np_dtype
    mask = b.op("Equal", [species, b.const(f"e{e}", np.int64(e), np.int64)], f"is_e{e}")
    nz = b.op("NonZero", [mask], f"nz_e{e}")                                       # (1, m)
    rows = b.op("Reshape", [nz, b.const("flat", [-1], np.int64)], f"rows_e{e}")   # (m,) for Gather
    idx = b.op("Transpose", [nz], f"idx_e{e}", perm=[1, 0])                        # (m, 1) for ScatterND
    g = b.op("Gather", [inv, rows], f"g_e{e}", axis=0)
    clip = model.input_clip
    factor = 1.0 / _f64(model.feature_std[e]) / (clip or 1.0)                      # 1/std, or 1/(std·c)
    x = b.op("Mul", [b.op("Sub", [g, b.const(f"mean_e{e}", _f64(model.feature_mean[e]).astype(dt))]),
                     b.const(f"invstd_e{e}", factor.astype(dt))], f"x_e{e}")
    if clip:
        x = b.op("Tanh", [x], f"xc_e{e}")
    linears = [m for m in model.nets[e] if isinstance(m, torch.nn.Linear)]
    for li, lin in enumerate(linears):
        w, bias = _f64(lin.weight).T, _f64(lin.bias)
        if li == 0 and clip:
            w = w * clip
        if li == len(linears) - 1:
            scale = _f64(model.output_scale[e])
            w, bias = w * scale, bias * scale
        x = b.op("Add", [b.op("MatMul", [x, b.const(f"w{li}_e{e}", w.astype(dt))]),
                         b.const(f"b{li}_e{e}", bias.astype(dt))], f"h{li}_e{e}")
        if li < len(linears) - 1:
            x = _activation(b, x, model.activation)
    return b.op("ScatterND", [acc, idx, x], f"acc_e{e}")


#: the distinct entries of ``z`` (see :func:`_solve_affine`) as products of two rows of
#: ``[V_x, V_y, V_z, p]`` (each (n, K)): A_00, A_11, A_22, A_01, A_12, A_02, b_0, b_1, b_2
_Z_PRODUCTS = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3))


def _solve_affine(eps_rel: float, eps_abs: float):
    """Matrix ``W`` (9, 60) and offset ``c`` (60,) of the projection head's ``z W + c``.

    ``z`` (n, 9) holds the distinct entries of ``A = VᵀV`` and ``b = Vᵀp`` in
    the order of ``_Z_PRODUCTS``. ``z W + c`` regularises ``A`` to ``A + εI``,
    ``ε = eps_rel·tr(A)/3 + eps_abs`` (affine in ``A``), and copies five
    blocks of 12 entries ``(i, j)``, ``i < 3``, ``j < 4``, out of it: the
    factors ``P, Q, R, S`` of the cofactors
    ``C_rc = A[r+1, c+1] A[r+2, c+2] - A[r+1, c+2] A[r+2, c+1]`` (indices mod 3,
    the products of :func:`~fastfeat.train.model.solve3_adjugate`), of ``C_ij``
    at ``j < 3`` and of ``C_0i`` at ``j = 3``; then ``H``, ``b_i`` at ``j < 3``
    and ``A_0i`` at ``j = 3``. Summed over ``i``, ``H·C`` is
    ``[adj(A) b, det(A)]``.
    """
    def col_a(i, j):                     # column of A_ij in the full layout z12 (A_ij at 4i + j, b_i at 4i + 3)
        return 4 * (i % 3) + j % 3

    diag = np.zeros(12)
    diag[[col_a(0, 0), col_a(1, 1), col_a(2, 2)]] = 1.0
    reg = np.eye(12) + (eps_rel / 3.0) * np.outer(diag, diag)      # z12 reg = [A + eps_rel·tr(A)/3 I | b]
    select = np.zeros((12, 60))
    for i in range(3):
        for j in range(4):
            r, c = (i, j) if j < 3 else (0, i)
            sources = (col_a(r + 1, c + 1), col_a(r + 2, c + 2), col_a(r + 1, c + 2), col_a(r + 2, c + 1),
                       4 * i + 3 if j < 3 else col_a(0, i))                     # P, Q, R, S, H
            for blk, s in enumerate(sources):
                select[s, 12 * blk + 4 * i + j] = 1.0
    expand = np.zeros((9, 12))                                     # z12 = z expand (A symmetric)
    for q, (i, j) in enumerate(_Z_PRODUCTS):
        if j == 3:
            expand[q, 4 * i + 3] = 1.0
        else:
            expand[q, col_a(i, j)] = expand[q, col_a(j, i)] = 1.0
    return expand @ reg @ select, (eps_abs * diag) @ select


def _components(b: _Builder, cov: str) -> list:
    """The three components of the covariant input, each (n, K) (``Gather`` of one index on axis 2)."""
    return [b.op("Gather", [cov, b.const(f"axis_c{c}", np.int64(c), np.int64)], f"v{'xyz'[c]}", axis=2)
            for c in range(3)]


def _row_dots(b: _Builder, rows: list, products, stem: str, out=None) -> str:
    """``Σ_k x_k y_k`` for each pair ``(x, y)`` of ``rows`` in ``products``, as columns of an (n, m) tensor
    (``Mul`` + ``ReduceSum`` over the contiguous last axis, then ``Concat``)."""
    axes = b.const("axes_1", [1], np.int64)
    cols = [b.op("ReduceSum", [b.op("Mul", [rows[i], rows[j]]), axes], f"{stem}_{i}{j}", keepdims=1)
            for i, j in products]
    return b.op("Concat", cols, stem, axis=1, out=out)


def _projection_head(b: _Builder, model: StaggeredNetwork, p: str, cov: str, out: str) -> str:
    """``F = adj(A) b / det(A)``, ``A = VᵀV + εI``, ``b = Vᵀp``, on whole (n, ·) tensors.

    The nine distinct entries of ``A`` and ``b`` are row dot products of the
    components ``V_x, V_y, V_z`` and ``p`` (``Mul`` + ``ReduceSum`` over the
    last axis: about 4x faster in onnxruntime than a batched (3, K) x (K, 4)
    ``MatMul``); one ``Gemm`` regularises ``A`` and picks the factors of its
    cofactors (see :func:`_solve_affine`), and the sum over rows is a
    ``MatMul`` (``Gather`` along axis 1 and ``ReduceSum`` over a middle axis
    are slow in onnxruntime).
    """
    w, c = _solve_affine(model.eps_rel, model.eps_abs)
    z = _row_dots(b, _components(b, cov) + [p], _Z_PRODUCTS, "z")                  # (n, 9)
    g = b.op("Gemm", [z, b.const("solve_w", w), b.const("solve_c", c)], "solve_g")  # (n, 60)
    fp, fq, fr, fs, h = b.op("Split", [g], "solve", n_out=5, axis=1)               # 5 x (n, 12)
    cof = b.op("Sub", [b.op("Mul", [fp, fq]), b.op("Mul", [fr, fs])], "cof")
    row_sum = np.tile(np.eye(4), (3, 1))                                           # (12, 4): Σ_i of (i, j)
    y = b.op("MatMul", [b.op("Mul", [h, cof]), b.const("row_sum", row_sum)], "adjb_det")   # (n, 4)
    num, det = b.op("Split", [y, b.const("split31", [3, 1], np.int64)], "adjb", n_out=2, axis=1)
    return b.op("Div", [num, det], out=out)


def _basis_head(b: _Builder, c: str, cov: str, out: str) -> str:
    """``F = Σ_k c_k V_k``: one row dot product per component (as in the projection head)."""
    rows = _components(b, cov) + [c]
    return _row_dots(b, rows, ((0, 3), (1, 3), (2, 3)), "f", out=out)


def model_to_onnx(model: StaggeredNetwork, *, target="forces", units=None, data_hash="", validation=None,
                  dtype="float32", name="fastfeat_staggered", feature_range=None) -> onnx.ModelProto:
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
    feature_range : str, optional
        ``fastfeat.feature_range`` metadata: the training range of every invariant column per element
        (:func:`fastfeat.runtime.extrapolation.feature_range_metadata` of the training features).

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
    # [n_atoms, 1]: the shape per-atom constants are broadcast (Expand) to
    n1 = b.op("Concat", [b.op("Shape", ["covariant"], "n", end=1), b.const("one", [1], np.int64)], "n1", axis=0)
    acc = b.op("Expand", [b.const("zeros_k", np.zeros((1, n_k))), n1], "zeros")   # (n_atoms, K), filled below
    net_in = _network_inputs(b, model, "invariant", "covariant", n1)
    for e in range(spec.n_species):
        acc = _element_network(b, model, e, net_in, "species", acc)
    if model.head == "projection":
        _projection_head(b, model, acc, "covariant", out="forces")
    else:
        _basis_head(b, acc, "covariant", out="forces")
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
    if feature_range is not None:
        meta["fastfeat.feature_range"] = feature_range
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
