"""The ONNX model contract (model format 1): metadata keys, signature checks.

One place that knows what a fastfeat ``.onnx`` file must hold. The runtime
reads models through :func:`read_model_info` and :func:`check_signature`;
exporters can build the metadata with :func:`make_metadata`.

Contract
--------
Inputs
    ``invariant`` float32 [n_atoms, n_invariant], ``covariant`` float32
    [n_atoms, n_covariant, 3], ``species`` int64 [n_atoms] (index into the
    spec's species). ``n_atoms`` is dynamic. A float64 export uses float64
    for ``invariant``, ``covariant`` and ``forces``.
Output
    ``forces`` float32 [n_atoms, 3] (eV/Å, or the unit of the learned target).
Metadata (all strings)
    ``fastfeat.format_version`` ("1"), ``fastfeat.spec`` (FeatureSpec JSON),
    ``fastfeat.species`` (JSON list), ``fastfeat.head``, ``fastfeat.target``,
    ``fastfeat.units`` (JSON), ``fastfeat.version``, ``fastfeat.data_hash``,
    ``fastfeat.validation`` (JSON), ``fastfeat.dtype``; optional
    ``fastfeat.feature_range`` (JSON: per element, the training range of every
    invariant column; see :mod:`fastfeat.runtime.extrapolation`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from fastfeat import FeatureSpec

from .extrapolation import FEATURE_RANGE_KEY, parse_feature_range

__all__ = [
    "MODEL_FORMAT_VERSION",
    "KNOWN_HEADS",
    "ModelLoadError",
    "ModelInfo",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "make_metadata",
    "read_model_info",
    "check_signature",
    "describe_unparsable",
]

#: Newest model format this runtime reads.
MODEL_FORMAT_VERSION = 1

#: Values of ``fastfeat.head`` this runtime knows (fastfeat.train.model.HEADS, what
#: fastfeat.train.export writes). The key itself may be absent (ModelInfo.head "").
KNOWN_HEADS = ("projection", "basis")

INPUT_NAMES = ("invariant", "covariant", "species")
OUTPUT_NAME = "forces"

_PREFIX = "fastfeat."
_REQUIRED_KEYS = ("format_version", "spec", "species", "dtype")
_ORT_TYPES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float64): "tensor(double)"}


class ModelLoadError(ValueError):
    """A file is not a usable fastfeat model; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model file's metadata says about it.

    Attributes
    ----------
    spec : FeatureSpec
        Features the model consumes.
    species : tuple of str
        Chemical symbols, same order as ``spec.species``.
    dtype : numpy.dtype
        float32 or float64: dtype of ``invariant``, ``covariant``, ``forces``.
    head, target, version, data_hash : str
        Head ("projection" | "basis", see :data:`KNOWN_HEADS`; "" when the
        key is absent), learned target (e.g. "forces"; the
        runtime uses only "forces" models as force fields, see
        ``ForceModel.target``), fastfeat version that wrote it, sha256 of the
        training data.
    units : dict
        e.g. ``{"length": "Å", "force": "eV/Å"}``.
    validation : dict
        Validation/test metrics stored by the exporter.
    metadata : dict
        All metadata_props, raw strings.
    feature_range : dict or None
        ``{symbol: (min, max)}``: the training range of every invariant column per element
        (``fastfeat.feature_range``), None when the file has none (exported before it existed).
    """

    spec: FeatureSpec
    species: tuple
    dtype: np.dtype
    head: str = ""
    target: str = "forces"
    units: dict = field(default_factory=dict)
    version: str = ""
    data_hash: str = ""
    validation: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    feature_range: dict | None = None


#: spellings of eV/Å that a forces model's ``fastfeat.units`` "force" may hold: the unit of ASE, and so of the
#: runtime's forces, Calculator, MD and relaxation (a model without the key is taken to be in eV/Å)
EV_PER_ANGSTROM = ("eV/Å", "eV/A", "eV/Ang", "eV/Angstrom", "eV/angstrom")


def make_metadata(spec, *, head="basis", target="forces", dtype="float32", version=None,
                  data_hash="", validation=None, units=None) -> dict:
    """metadata_props of a model-format-1 file, as a dict of strings."""
    import fastfeat

    dt = np.dtype(dtype)
    if dt not in _ORT_TYPES:
        raise ValueError(f"`dtype` must be float32 or float64, got {dt}")
    if head not in KNOWN_HEADS:
        raise ValueError(f"`head` must be one of {list(KNOWN_HEADS)}, got {head!r}")
    return {
        _PREFIX + "format_version": str(MODEL_FORMAT_VERSION),
        _PREFIX + "spec": spec.to_json(),
        _PREFIX + "species": json.dumps(list(spec.species)),
        _PREFIX + "head": head,
        _PREFIX + "target": target,
        _PREFIX + "units": json.dumps(units or {"length": "Å", "force": "eV/Å"}),
        _PREFIX + "version": fastfeat.__version__ if version is None else version,
        _PREFIX + "data_hash": data_hash,
        _PREFIX + "validation": json.dumps(validation or {}),
        _PREFIX + "dtype": dt.name,
    }


def describe_unparsable(path, exc) -> str:
    """Message for a file onnxruntime could not parse: empty, truncated or not ONNX."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        head = b""
    if not head:
        what = "it is empty (0 bytes)"
    elif head[0] == 0x08:
        # an ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08
        if "protobuf" in str(exc).lower():  # INVALID_PROTOBUF / "Protobuf parsing failed"
            what = "it starts like an ONNX model but cannot be parsed (truncated or corrupted file?)"
        else:  # parsed, then refused: a type or shape error, an unknown operator or opset
            what = "it is an ONNX model whose graph onnxruntime refuses (invalid or unsupported graph)"
    else:
        what = f"it is not an ONNX model (it starts with {head[:8]!r})"
        name = os.path.basename(str(path)).lower()
        if name.endswith(_STRUCTURE_SUFFIXES) or name.startswith(("poscar", "contcar")):
            what += ("; it looks like a structure file: the commands take the model first, then the structure "
                     "(fastfeat md MODEL STRUCTURE)")
    return f"model file {str(path)!r} could not be loaded by onnxruntime: {what}. onnxruntime said: {exc}"


#: file names that are structures, not models (a hint for swapped MODEL and STRUCTURE arguments)
_STRUCTURE_SUFFIXES = (".extxyz", ".xyz", ".extxyz.xz", ".xyz.xz", ".extxyz.gz", ".xyz.gz", ".cif", ".pdb", ".traj",
                       ".vasp", ".xsf", ".res", ".gen")


def _json_field(meta, key, path, expect):
    text = meta[_PREFIX + key]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"model {path!r}: metadata `{_PREFIX}{key}` is not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(value, expect):
        raise ModelLoadError(
            f"model {path!r}: metadata `{_PREFIX}{key}` must be a JSON {expect.__name__}, got {type(value).__name__}"
        )
    return value


def read_model_info(meta: dict, path: str) -> ModelInfo:
    """Validate a model's metadata_props and return a :class:`ModelInfo`.

    Raises
    ------
    ModelLoadError
        A required key is missing, the format version is newer than this
        runtime reads, the FeatureSpec cannot be understood, species/dtype
        disagree, or ``fastfeat.head`` (optional) is not one of
        :data:`KNOWN_HEADS`.
    """
    missing = [_PREFIX + k for k in _REQUIRED_KEYS if _PREFIX + k not in meta]
    if missing:
        raise ModelLoadError(
            f"model {path!r} lacks the fastfeat metadata {missing} (present keys: {sorted(meta)}); "
            "it was not exported by fastfeat.train.export or its metadata was stripped"
        )
    raw_version = meta[_PREFIX + "format_version"]
    try:
        version = int(raw_version)
    except ValueError:
        raise ModelLoadError(
            f"model {path!r}: metadata `fastfeat.format_version` must be an integer, got {raw_version!r}"
        ) from None
    if version > MODEL_FORMAT_VERSION:
        raise ModelLoadError(
            f"model {path!r} has model format version {version}, newer than this fastfeat reads "
            f"(<= {MODEL_FORMAT_VERSION}); upgrade fastfeat to use it"
        )
    if version < 1:
        raise ModelLoadError(f"model {path!r}: `fastfeat.format_version` must be >= 1, got {version}")
    try:
        spec = FeatureSpec.from_json(meta[_PREFIX + "spec"])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"model {path!r}: its FeatureSpec (`fastfeat.spec`) cannot be used: {exc}") from None
    species = tuple(_json_field(meta, "species", path, list))
    if species != tuple(spec.species):
        raise ModelLoadError(
            f"model {path!r}: metadata `fastfeat.species` {list(species)} differs from the FeatureSpec's "
            f"species {list(spec.species)}"
        )
    dtype_name = meta[_PREFIX + "dtype"]
    if dtype_name not in ("float32", "float64"):
        raise ModelLoadError(f"model {path!r}: metadata `fastfeat.dtype` must be 'float32' or 'float64', got {dtype_name!r}")
    head = meta.get(_PREFIX + "head", "")
    if _PREFIX + "head" in meta and head not in KNOWN_HEADS:
        raise ModelLoadError(
            f"model {path!r}: metadata `fastfeat.head` must be one of {list(KNOWN_HEADS)}, got {head!r}"
        )
    units = _json_field(meta, "units", path, dict) if _PREFIX + "units" in meta else {}
    validation = _json_field(meta, "validation", path, dict) if _PREFIX + "validation" in meta else {}
    feature_range = None
    if FEATURE_RANGE_KEY in meta:
        try:
            feature_range = parse_feature_range(meta[FEATURE_RANGE_KEY], spec)
        except ValueError as exc:
            raise ModelLoadError(f"model {path!r}: {exc}") from None
    return ModelInfo(
        spec=spec,
        species=species,
        dtype=np.dtype(dtype_name),
        head=head,
        target=meta.get(_PREFIX + "target", "forces"),
        units=units,
        version=meta.get(_PREFIX + "version", ""),
        data_hash=meta.get(_PREFIX + "data_hash", ""),
        validation=validation,
        metadata=dict(meta),
        feature_range=feature_range,
    )


def _check_dims(what, shape, expected, path):
    """`shape` from onnxruntime (ints, strings or None); `expected` uses None for the dynamic n_atoms."""
    got = list(shape) if shape is not None else None
    if got is None or len(got) != len(expected):
        raise ModelLoadError(f"model {path!r}: {what} must have shape {_fmt(expected)}, got {got}")
    for k, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            if isinstance(g, int) and g >= 0:
                raise ModelLoadError(
                    f"model {path!r}: dimension 0 of {what} must be the dynamic 'n_atoms', got the fixed size {g} "
                    "(export with a dynamic axis)"
                )
        elif g != e:
            raise ModelLoadError(f"model {path!r}: {what} must have shape {_fmt(expected)}, got {got} (dimension {k})")


def _fmt(expected):
    return "[" + ", ".join("n_atoms" if e is None else str(e) for e in expected) + "]"


def check_signature(session, info: ModelInfo, path: str) -> None:
    """Check the session's inputs/output against the contract and the spec sizes."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != set(INPUT_NAMES):
        raise ModelLoadError(
            f"model {path!r}: inputs must be named {list(INPUT_NAMES)}, got {list(inputs)}"
        )
    if OUTPUT_NAME not in outputs:
        raise ModelLoadError(f"model {path!r}: it needs an output named {OUTPUT_NAME!r}, got {list(outputs)}")
    ftype = _ORT_TYPES[info.dtype]
    spec = info.spec
    expected = {
        "invariant": (ftype, (None, spec.n_invariant)),
        "covariant": (ftype, (None, spec.n_covariant, 3)),
        "species": ("tensor(int64)", (None,)),
    }
    for name, (etype, eshape) in expected.items():
        node = inputs[name]
        if node.type != etype:
            raise ModelLoadError(
                f"model {path!r}: input {name!r} must be {etype} (metadata dtype {info.dtype.name}), got {node.type}"
            )
        _check_dims(f"input {name!r}", node.shape, eshape, path)
    out = outputs[OUTPUT_NAME]
    if out.type != ftype:
        raise ModelLoadError(
            f"model {path!r}: output {OUTPUT_NAME!r} must be {ftype} (metadata dtype {info.dtype.name}), got {out.type}"
        )
    _check_dims(f"output {OUTPUT_NAME!r}", out.shape, (None, 3), path)
