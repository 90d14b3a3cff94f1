"""``fastfeat featurize STRUCTURES (--spec spec.json | --model MODEL) --out features.npz``.

Writes the invariant and covariant features of every frame of a structure
file (anything ASE reads) to an ``.npz``, so that external codes can run an
exported model with onnxruntime alone (see ``examples/external_onnx.py``).

The ``.npz`` holds:

``invariant``  (N, n_invariant) float32/float64 (``--dtype``; default: the model's precision with
               ``--model``, float32 with ``--spec``)
``covariant``  (N, n_covariant, 3), the same dtype
``species``    (N,) int64, index into the spec's species (the model's ``species`` input)
``offsets``    (n_structures + 1,) int64, atoms of structure s are offsets[s]:offsets[s+1]
``numbers``    (N,) int64 atomic numbers
``spec``       0-d str array, the FeatureSpec JSON

No torch import here: ``--model`` reads the spec from the model's metadata
with onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

__all__ = ["main", "spec_from_model", "write_features"]


def spec_from_model(model):
    """(FeatureSpec, numpy dtype) of an exported model (path or bundled name): the features it takes."""
    import onnxruntime as ort

    from ._io import bundled_model_file
    from ._spec import FeatureSpec

    path = bundled_model_file(os.fspath(model))  # a folder named like a bundled model does not hide it
    if path is None:
        raise ValueError(f"`--model` must be an .onnx file or a bundled model name, got {os.fspath(model)!r}")
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a corrupt or foreign file
        raise ValueError(f"`--model` {path!r} is not a readable ONNX model: {type(exc).__name__}: {exc}") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if "fastfeat.spec" not in meta:
        raise ValueError(f"`--model` {path!r} has no `fastfeat.spec` metadata; it was not exported by fastfeat")
    dtype = meta.get("fastfeat.dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"`--model` {path!r} has `fastfeat.dtype` {dtype!r}, expected 'float32' or 'float64'")
    return FeatureSpec.from_json(meta["fastfeat.spec"]), np.dtype(dtype)


def write_features(frames, spec, out, dtype=np.float32):
    """Featurize ``frames`` (list of ase.Atoms) and write the npz described above."""
    from ._features import featurize

    if len(frames) == 0:
        raise ValueError("`STRUCTURES` holds no structures")
    f = featurize(list(frames), spec, device="cpu", dtype=dtype)
    numbers = np.concatenate([np.asarray(a.numbers, dtype=np.int64) for a in frames])
    np.savez(out, invariant=np.asarray(f.invariant), covariant=np.asarray(f.covariant),
             species=np.asarray(f.species, dtype=np.int64), offsets=np.asarray(f.offsets, dtype=np.int64),
             numbers=numbers, spec=np.array(spec.to_json()))
    return f


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="fastfeat featurize",
                                description="Write invariant/covariant features of structures to an .npz.")
    p.add_argument("structures", metavar="STRUCTURES", help="structure file (any format ASE reads; all frames)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--spec", help="FeatureSpec JSON file")
    g.add_argument("--model", help="exported .onnx model (or bundled name): use its FeatureSpec")
    p.add_argument("--out", required=True, help="output .npz (the suffix is added when missing)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="feature precision (default: the model's with --model, float32 with --spec)")
    args = p.parse_args(argv)
    try:
        from ._io import check_output_path, read_spec_file, read_structures

        if args.spec:
            spec, dtype = read_spec_file(args.spec), np.dtype(np.float32)
        else:
            spec, dtype = spec_from_model(args.model)
        if args.dtype is not None:
            dtype = np.dtype(args.dtype)

        # np.savez appends .npz to any other name: check and report the file actually written
        out = args.out if args.out.endswith(".npz") else args.out + ".npz"
        check_output_path(out, "`--out`")
        frames = read_structures(args.structures, what="`STRUCTURES` file")
        f = write_features(frames, spec, out, dtype=dtype)
    except (ValueError, TypeError, OSError) as exc:
        print(f"fastfeat featurize: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {len(f.offsets) - 1} structures, {len(f)} atoms, "
          f"{spec.n_invariant} invariant + {spec.n_covariant} covariant features ({dtype.name})")
    return 0
