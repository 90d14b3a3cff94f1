"""Run a fastfeat model the way an external code would: onnxruntime + numpy only.

1. Features are computed once, e.g. ``fastfeat featurize frames.extxyz --model peo --out features.npz``
   (an external MD code would compute them itself from the FeatureSpec JSON in the model's metadata).
2. This script feeds them to the ONNX graph and prints / saves the forces.

Model contract (``fastfeat.format_version`` = "1"):
  inputs   invariant  float32 [n_atoms, n_invariant]
           covariant  float32 [n_atoms, n_covariant, 3]
           species    int64   [n_atoms]   (index into the model's ``fastfeat.species`` list)
  output   forces     float32 [n_atoms, 3]  (eV/Å)
  (float64 instead of float32 when ``fastfeat.dtype`` is "float64")

Usage::

    python examples/external_onnx.py MODEL.onnx features.npz [--out forces.npy]
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def load_model(path):
    """An onnxruntime session and the fastfeat metadata of ``path``."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("fastfeat.format_version") != "1":
        raise ValueError(f"{path}: unsupported fastfeat.format_version {meta.get('fastfeat.format_version')!r}")
    return session, meta


def predict_forces(session, meta, features):
    """Forces (n_atoms, 3) for the arrays of a ``fastfeat featurize`` npz."""
    if "spec" in features and json.loads(str(features["spec"])) != json.loads(meta["fastfeat.spec"]):
        raise ValueError("the features were computed with a different FeatureSpec than the model's")
    dtype = np.float64 if meta.get("fastfeat.dtype") == "float64" else np.float32
    # the graph does not check that its inputs agree: rows beyond the shortest input would get zero
    # or undefined forces, so the three arrays must describe the same atoms
    spec = json.loads(meta["fastfeat.spec"])
    n = len(features["species"])
    g, v = np.shape(features["invariant"]), np.shape(features["covariant"])
    if g[0] != n or v[0] != n:
        raise ValueError(f"invariant ({g[0]} rows), covariant ({v[0]} rows) and species ({n}) disagree on the atoms")
    shapes = {i.name: i.shape for i in session.get_inputs()}
    n_inv, n_cov = shapes["invariant"][1], shapes["covariant"][1]
    if g[1:] != (n_inv,) or v[1:] != (n_cov, 3):
        raise ValueError(f"the model takes invariant (n, {n_inv}) and covariant (n, {n_cov}, 3), got {g} and {v}")
    if n and not (0 <= features["species"].min() and features["species"].max() < len(spec["species"])):
        raise ValueError(f"species indices must lie in 0 ... {len(spec['species']) - 1} (the model's species); "
                         "an atom with another index would get zero force")
    (forces,) = session.run(["forces"], {
        "invariant": np.ascontiguousarray(features["invariant"], dtype=dtype),
        "covariant": np.ascontiguousarray(features["covariant"], dtype=dtype),
        "species": np.ascontiguousarray(features["species"], dtype=np.int64),
    })
    return forces


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="exported .onnx model")
    parser.add_argument("features", help=".npz written by `fastfeat featurize`")
    parser.add_argument("--out", help="save the forces (n_atoms, 3) as .npy")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.model):
        # a bundled model's file: python -c "import fastfeat.runtime as r; print(r.ForceModel.pretrained('peo').path)"
        print(f"external_onnx.py: error: model {args.model!r} is not a file (give the .onnx file's path)",
              file=sys.stderr)
        return 2
    try:
        session, meta = load_model(args.model)
        with np.load(args.features) as z:
            features = {k: z[k] for k in z.files}
        forces = predict_forces(session, meta, features)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:  # refused input, unreadable file: one line
        print(f"external_onnx.py: error: {exc}", file=sys.stderr)
        return 2
    offsets = features.get("offsets", np.array([0, len(forces)]))
    species = json.loads(meta["fastfeat.species"])
    unit = json.loads(meta["fastfeat.units"]).get("force", "")
    print(f"model: {meta['fastfeat.head']} head, species {species}, target {meta['fastfeat.target']} ({unit})")
    for s in range(len(offsets) - 1):
        f = forces[offsets[s]:offsets[s + 1]]
        if len(f) == 0:
            print(f"structure {s}: 0 atoms")
            continue
        print(f"structure {s}: {len(f)} atoms, max |F| = {np.linalg.norm(f, axis=1).max():.4f} {unit}, "
              f"sum F = {np.array2string(f.sum(axis=0), precision=4)}")
    if args.out:
        np.save(args.out, forces)
        print(f"forces written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
