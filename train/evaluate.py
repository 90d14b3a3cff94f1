"""Force-error metrics, onnxruntime inference of exported models, parity plots."""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["force_metrics", "OnnxForceModel", "resolve_model", "parity_plot", "format_metrics"]

def resolve_model(model) -> str:
    """Path of ``model``: an existing file, or a bundled model's name (``peo`` …)."""
    from fastfeat._io import bundled_model_file, bundled_model_names

    path = os.fspath(model)
    found = bundled_model_file(path)  # a folder named like a bundled model does not hide it
    if found is not None:
        return found
    if path.endswith(".onnx") or os.sep in path:
        raise FileNotFoundError(f"`MODEL` file {path!r} does not exist")
    raise ValueError(f"`MODEL` must be an .onnx file or a bundled model name {bundled_model_names()}, got {path!r}")


def force_metrics(pred_nc, ref_nc, species_n=None, symbols=None, offsets=None) -> dict:
    """Force (or target) errors.

    Parameters
    ----------
    pred_nc, ref_nc : array, shape (N, 3)
        Predicted and reference vectors (eV/Å).
    species_n : array, shape (N,), int, optional
        Species index of each atom; with ``symbols`` adds per-element figures.
    symbols : sequence of str, optional
    offsets : array, shape (n_structures + 1,), optional

    Returns
    -------
    dict
        ``mae`` and ``rmse`` over Cartesian components, ``ref_rms`` (RMS of
        the reference components), ``rel_rmse = rmse / ref_rms``, ``cosine``
        (mean cosine similarity of predicted and reference vectors over atoms
        where both are non-zero), ``n_atoms``, ``n_structures`` and
        ``per_element`` {symbol: {mae, rmse, rel_rmse, cosine, n_atoms}}.
    """
    pred = np.asarray(pred_nc, dtype=np.float64)
    ref = np.asarray(ref_nc, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"`pred_nc` and `ref_nc` must both have shape (N, 3), got {pred.shape} and {ref.shape}")
    if len(ref) == 0:
        raise ValueError("cannot compute metrics of an empty data set (0 atoms)")

    def block(p, r):
        err = p - r
        rmse = float(np.sqrt((err**2).mean()))
        ref_rms = float(np.sqrt((r**2).mean()))
        npn, nrn = np.linalg.norm(p, axis=1), np.linalg.norm(r, axis=1)
        ok = (npn > 1e-12) & (nrn > 1e-12)
        cos = float(((p[ok] * r[ok]).sum(axis=1) / (npn[ok] * nrn[ok])).mean()) if ok.any() else float("nan")
        return {"mae": float(np.abs(err).mean()), "rmse": rmse, "ref_rms": ref_rms,
                "rel_rmse": rmse / ref_rms if ref_rms > 0 else float("inf"), "cosine": cos, "n_atoms": int(len(r))}

    out = block(pred, ref)
    out["n_structures"] = int(len(offsets) - 1) if offsets is not None else None
    if species_n is not None and symbols is not None:
        sp = np.asarray(species_n)
        out["per_element"] = {sym: block(pred[sp == e], ref[sp == e]) for e, sym in enumerate(symbols)
                              if (sp == e).any()}
    return out


def format_metrics(m: dict, unit="eV/Å") -> str:
    """Human-readable table of :func:`force_metrics`."""
    lines = [f"{'':8s}{'atoms':>8s}{'MAE':>10s}{'RMSE':>10s}{'rel RMSE':>10s}{'cosine':>9s}   ({unit})"]

    def row(name, b):
        lines.append(f"{name:8s}{b['n_atoms']:8d}{b['mae']:10.4f}{b['rmse']:10.4f}{b['rel_rmse']:10.4f}"
                     f"{b['cosine']:9.4f}")

    row("all", m)
    for sym, b in (m.get("per_element") or {}).items():
        row(sym, b)
    return "\n".join(lines)


class OnnxForceModel:
    """An exported model run with onnxruntime on precomputed features.

    Parameters
    ----------
    path : str
        .onnx file written by :func:`fastfeat.train.export.export_onnx`.
    """

    def __init__(self, path, threads=1):
        import onnxruntime as ort

        from fastfeat import FeatureSpec

        self.path = os.fspath(path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if os.path.isdir(self.path):
            raise ValueError(f"`model` {self.path!r} is a folder, not an .onnx file")
        try:
            self.session = ort.InferenceSession(self.path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, NoSuchFile, Fail, ...)
            raise ValueError(f"cannot read `model` {self.path!r} as an ONNX model: {type(exc).__name__}: "
                             f"{str(exc).strip()}") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        version = self.metadata.get("fastfeat.format_version")
        if version != "1":
            raise ValueError(f"`model` {self.path!r} has fastfeat.format_version {version!r}, expected '1'")
        self.spec = FeatureSpec.from_json(self.metadata["fastfeat.spec"])
        self.dtype = np.float64 if self.metadata.get("fastfeat.dtype") == "float64" else np.float32
        self.target = self.metadata.get("fastfeat.target", "forces")
        self.units = json.loads(self.metadata.get("fastfeat.units", "{}"))

    def __call__(self, invariant_nf, covariant_nkc, species_n) -> np.ndarray:
        """Forces (N, 3) from features (N, n_inv), (N, K, 3) and species (N,)."""
        return self.session.run(["forces"], {
            "invariant": np.ascontiguousarray(invariant_nf, dtype=self.dtype),
            "covariant": np.ascontiguousarray(covariant_nkc, dtype=self.dtype),
            "species": np.ascontiguousarray(species_n, dtype=np.int64)})[0]


def parity_plot(pred_nc, ref_nc, species_n, symbols, path, title="", unit="eV/Å"):
    """Save a parity plot (reference vs predicted components, one colour per element)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.asarray(pred_nc)
    ref = np.asarray(ref_nc)
    sp = np.asarray(species_n)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    lim = float(max(np.abs(ref).max(), np.abs(pred).max())) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.8)
    for e, sym in enumerate(symbols):
        m = sp == e
        if m.any():
            ax.scatter(ref[m].ravel(), pred[m].ravel(), s=2, alpha=0.4, label=sym)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel(f"reference ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.set_title(title)
    ax.legend(markerscale=4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
