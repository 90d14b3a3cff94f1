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
    session, meta = load_model(args.model)
    with np.load(args.features) as z:
        features = {k: z[k] for k in z.files}
    forces = predict_forces(session, meta, features)
    offsets = features.get("offsets", np.array([0, len(forces)]))
    species = json.loads(meta["fastfeat.species"])
    unit = json.loads(meta["fastfeat.units"]).get("force", "")
    print(f"model: {meta['fastfeat.head']} head, species {species}, target {meta['fastfeat.target']} ({unit})")
    for s in range(len(offsets) - 1):
        f = forces[offsets[s]:offsets[s + 1]]
        print(f"structure {s}: {len(f)} atoms, max |F| = {np.linalg.norm(f, axis=1).max():.4f} {unit}, "
              f"sum F = {np.array2string(f.sum(axis=0), precision=4)}")
    if args.out:
        np.save(args.out, forces)
        print(f"forces written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
