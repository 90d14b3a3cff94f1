"""Which forces can the DCF heads represent?  A diagnosis of the li4p2o7 accuracy gap (issue #4).

The direct-force heads build a force from the atom's covariant vectors V_k = Σ_j g_k(r_ij) r̂_ij
(one vector per radial shell and neighbour species) with coefficients that depend on the atom's
invariants only. A pairwise force Σ_j f(r_ij) r̂_ij is then exactly representable (constant
coefficients), but a three-body force is not: a bending term gives each neighbour its own
angle-dependent weight, while V sums the neighbours of a shell with one weight.

The same structures and train/val/test splits as the bundled ``li4p2o7`` model, the bundled
training configuration (``bundled_config``: dense preset, hidden 64-64, 60 epochs, best
validation epoch kept), and these targets and inputs:

* ``pair``: forces of a Morse pair potential (species-pair bond lengths, cosine cutoff 5 Å);
* ``bend``: forces of an O-P-O bending potential, 5 eV · (cos θ + 1/3)² per angle of each PO4
  (P-O within 1.9 Å), nothing else;
* ``gfn1``: the data set's GFN1-xTB forces;
* ``+ angular V`` (prototype, NumPy, not part of fastfeat): extra covariant vectors
  W[a, b; η, ζ, λ] = 2^(1-ζ) Σ_{j<k} (1 + λ cos θ_jik)^ζ exp(-η (r_ij² + r_ik² + r_jk²))
  fc fc fc · (r̂_ij + r̂_ik), and for a ≠ b also with (r̂_ij - r̂_ik) (j of species a, k of b),
  η ∈ {0.02, 0.3}, ζ ∈ {1, 4}, λ = ±1, angular cutoff 4.5 Å;
* ``+ neighbour G`` (prototype): the cutoff-weighted mean of the neighbours' invariants appended
  to each atom's invariants (a receptive field of two cutoffs, like a conservative model's).

``--data peo`` or ``--data li4p2o7-water`` runs the GFN1-xTB rows only (the synthetic targets
are li4p2o7's P-O bonds). Writes benchmarks/results/dcf_expressivity.json and .md
(``dcf_expressivity_<data>.*`` for the other data sets; test relative force RMSE). Needs the
``[train]`` extra (torch); about 12 min on one core for li4p2o7 and two seeds.

    python -m benchmarks.compare.dcf_expressivity [--seeds 0 1] [--data li4p2o7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")
DATA = "li4p2o7"  # the data set of the synthetic rows

#: Morse parameters per species pair: bond length (Å); depth 3 eV for P-O, 0.3 eV otherwise
R0 = {("O", "P"): 1.55, ("Li", "O"): 2.0, ("O", "O"): 2.5, ("Li", "P"): 3.0, ("Li", "Li"): 2.8, ("P", "P"): 3.0}
DEPTH = {("O", "P"): 3.0}
ANGULAR_V = dict(cutoff=4.5, params=[(e, z, l) for e in (0.02, 0.3) for z in (1.0, 4.0) for l in (1.0, -1.0)])


#: the bundled training settings this diagnosis was made with (the dense preset, hidden 64-64; the bundled
#: models have since moved on: README, "Bundled models")
_SETTINGS = dict(spec_preset="dense", hidden=[64, 64], ema_decay=0.0)


def _fc(r, rc):
    return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)


def synthetic_forces(atoms, kind):
    """Forces (N, 3) of the ``pair`` (Morse) or ``bend`` (O-P-O) potential, by autograd."""
    import torch
    from ase.neighborlist import neighbor_list

    x = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    sym = atoms.get_chemical_symbols()
    energy = x.sum() * 0.0
    if kind == "pair":
        i, j, s = neighbor_list("ijS", atoms, 5.0)
        keep = i < j
        i, j, s = i[keep], j[keep], s[keep]
        r = (x[j] - x[i] + torch.tensor(s, dtype=torch.float64) @ cell).norm(dim=1)
        keys = [tuple(sorted((sym[a], sym[b]))) for a, b in zip(i, j)]
        r0 = torch.tensor([R0[k] for k in keys], dtype=torch.float64)
        depth = torch.tensor([DEPTH.get(k, 0.3) for k in keys], dtype=torch.float64)
        cut = 0.5 * (torch.cos(np.pi * r / 5.0) + 1.0)
        energy = energy + (depth * (1.0 - torch.exp(-2.0 * (r - r0))) ** 2 * cut).sum()
    elif kind == "bend":
        i, j, s = neighbor_list("ijS", atoms, 1.9)
        keep = np.array([sym[a] == "P" and sym[b] == "O" for a, b in zip(i, j)], bool)
        i, j, s = i[keep], j[keep], s[keep]
        rv = x[j] - x[i] + torch.tensor(s, dtype=torch.float64) @ cell
        u = rv / rv.norm(dim=1, keepdim=True)
        for p in np.unique(i):
            bonds = np.nonzero(i == p)[0]
            for a in range(len(bonds)):
                for b in range(a + 1, len(bonds)):
                    energy = energy + 5.0 * ((u[bonds[a]] * u[bonds[b]]).sum() + 1.0 / 3.0) ** 2
    else:
        raise ValueError(kind)
    (grad,) = torch.autograd.grad(energy, x)
    return -grad.numpy()


def angular_covariants(atoms, species, cutoff, params):
    """The prototype W vectors of one structure, (N, n_pairs * P + n_mixed * P, 3)."""
    from ase.neighborlist import neighbor_list

    n, ns = len(atoms), len(species)
    sp = np.array([species.index(s) for s in atoms.get_chemical_symbols()])
    pairs = [(a, b) for a in range(ns) for b in range(a, ns)]
    pair_index = {p: q for q, p in enumerate(pairs)}
    n_p = len(params)
    out = np.zeros((n, 2 * len(pairs) * n_p, 3))
    i, j, dvec = neighbor_list("ijD", atoms, cutoff)
    order = np.argsort(i, kind="stable")
    i, j, dvec = i[order], j[order], dvec[order]
    starts = np.searchsorted(i, np.arange(n + 1))
    for c in range(n):
        d_c, j_c = dvec[starts[c]:starts[c + 1]], j[starts[c]:starts[c + 1]]
        if len(j_c) < 2:
            continue
        r = np.linalg.norm(d_c, axis=1)
        u = d_c / r[:, None]
        a_, b_ = np.triu_indices(len(j_c), 1)
        rjk = np.linalg.norm(d_c[b_] - d_c[a_], axis=1)
        cos = (u[a_] * u[b_]).sum(1)
        base = _fc(r[a_], cutoff) * _fc(r[b_], cutoff) * _fc(rjk, cutoff)
        r2 = r[a_] ** 2 + r[b_] ** 2 + rjk ** 2
        sa, sb = sp[j_c[a_]], sp[j_c[b_]]
        swap = (sa > sb)[:, None]
        ua, ub = np.where(swap, u[b_], u[a_]), np.where(swap, u[a_], u[b_])
        lo, hi = np.minimum(sa, sb), np.maximum(sa, sb)
        q = np.array([pair_index[(x, y)] for x, y in zip(lo, hi)])
        for k, (eta, zeta, lam) in enumerate(params):
            w = 2.0 ** (1.0 - zeta) * np.clip(1.0 + lam * cos, 0.0, None) ** zeta * np.exp(-eta * r2) * base
            col = q * n_p + k
            np.add.at(out[c], col, w[:, None] * (ua + ub))
            np.add.at(out[c], len(pairs) * n_p + col, (w * (lo != hi))[:, None] * (ua - ub))
    return out


def neighbour_mean(frames, fs, cutoff):
    """Cutoff-weighted mean of the neighbours' invariants, per atom."""
    from ase.neighborlist import neighbor_list

    parts = []
    for k, atoms in enumerate(frames):
        g = fs.invariant[fs.offsets[k]:fs.offsets[k + 1]].astype(np.float64)
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        w = _fc(d, cutoff)
        m = np.zeros_like(g)
        np.add.at(m, i, w[:, None] * g[j])
        s = np.zeros(len(atoms))
        np.add.at(s, i, w)
        parts.append(m / np.maximum(s, 1e-12)[:, None])
    return np.concatenate(parts)


def _append(spec, feats, extra_inv=None, extra_cov=None):
    """Feature sets and a spec of matching sizes with extra invariant / covariant columns (the
    spec's extra entries are placeholders that only size the network)."""
    ns = spec.n_species
    out = {}
    for split, fs in feats.items():
        fs = dataclasses.replace(fs)
        if extra_inv is not None:
            m = extra_inv[split]
            pad = np.zeros((fs.n_atoms, -(-m.shape[1] // ns) * ns), fs.invariant.dtype)
            pad[:, :m.shape[1]] = m
            fs.invariant = np.concatenate([fs.invariant, pad], axis=1)
        if extra_cov is not None:
            w = extra_cov[split]
            pad = np.zeros((fs.n_atoms, -(-w.shape[1] // ns) * ns, 3), fs.covariant.dtype)
            pad[:, :w.shape[1]] = w
            fs.covariant = np.concatenate([fs.covariant, pad], axis=1)
        out[split] = fs
    fs = out["train"]
    n_rad = (fs.invariant.shape[1] - spec.n_invariant) // ns
    n_cov = (fs.covariant.shape[1] - spec.n_covariant) // ns
    spec2 = dataclasses.replace(spec, radial=tuple(spec.radial) + tuple((1.0, 0.5 + 0.01 * k) for k in range(n_rad)),
                                covariant=tuple(spec.covariant) + tuple((1.0, 1.0 + 0.01 * k) for k in range(n_cov)))
    assert spec2.n_invariant == fs.invariant.shape[1] and spec2.n_covariant == fs.covariant.shape[1]
    return spec2, out


def _rel_rmse(pred, ref):
    return float(np.sqrt(((pred - ref) ** 2).sum(1).mean() / (ref ** 2).sum(1).mean()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data", default=DATA, choices=["li4p2o7", "li4p2o7-water", "peo"])
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dcf_expressivity[_DATA].json)")
    args = p.parse_args(argv)
    data = args.data
    if args.out is None:
        args.out = os.path.join(RESULTS, "dcf_expressivity.json" if data == DATA else f"dcf_expressivity_{data}.json")

    import torch

    torch.set_num_threads(1)
    from fastfeat.train.bundle_models import bundled_config
    from fastfeat.train.cli import prepare_features
    from fastfeat.train.data import load_frames
    from fastfeat.train.trainer import predict, train_model

    t_start = time.perf_counter()
    cfg = bundled_config(**_SETTINGS)
    feats, spec, _ = prepare_features(data, cfg, log=lambda m: None)
    frames = {split: load_frames(data, split)[0] for split in feats}
    species = list(spec.species)

    def with_target(kind):
        out = {}
        for split, fs in feats.items():
            t = np.concatenate([synthetic_forces(a, kind) for a in frames[split]])
            out[split] = dataclasses.replace(fs, target=t.astype(fs.target.dtype))
        return out

    targets = {"pair": with_target("pair"), "bend": with_target("bend"), "gfn1": feats} if data == DATA else {"gfn1": feats}
    ang = {split: np.concatenate([angular_covariants(a, species, ANGULAR_V["cutoff"], ANGULAR_V["params"])
                                  for a in frames[split]]) for split in feats}
    nbr = {split: neighbour_mean(frames[split], feats[split], spec.cutoff) for split in feats}
    cases = [
        ("pair", "V (bundled spec)", "basis", None, None),
        ("pair", "V (bundled spec)", "projection", None, None),
        ("bend", "V (bundled spec)", "basis", None, None),
        ("bend", "V (bundled spec)", "projection", None, None),
        ("bend", "V + angular V", "basis", None, ang),
        ("gfn1", "V (bundled spec)", "basis", None, None),
        ("gfn1", "V + angular V", "basis", None, ang),
        ("gfn1", "V + neighbour G", "basis", nbr, None),
    ]
    cases = [c for c in cases if c[0] in targets]
    rows = []
    for target, inputs, head, extra_inv, extra_cov in cases:
        spec2, fsets = _append(spec, targets[target], extra_inv, extra_cov)
        for seed in args.seeds:
            res = train_model(fsets["train"], fsets["val"], spec2, bundled_config(head=head, seed=seed, **_SETTINGS),
                              log=lambda m: None)
            row = {"target": target, "inputs": inputs, "head": head, "seed": seed, "K": spec2.n_covariant,
                   "n_invariant": spec2.n_invariant, "best_epoch": res.best_epoch + 1,
                   "ref_rms": float(np.sqrt((fsets["test"].target ** 2).sum(1).mean()))}
            for split in ("train", "val", "test"):
                row[f"{split}_rel_rmse"] = _rel_rmse(predict(res.model, fsets[split]), fsets[split].target)
            rows.append(row)
            print(f"[dcf_expressivity] {target:5s} {inputs:18s} {head:10s} seed {seed}: test rel. RMSE "
                  f"{row['test_rel_rmse']:.3f} (train {row['train_rel_rmse']:.3f}, best epoch {row['best_epoch']})",
                  flush=True)
    result = {"data": data, "angular_v": ANGULAR_V, "rows": rows, "seconds": time.perf_counter() - t_start,
              "command": "python -m benchmarks.compare.dcf_expressivity " + " ".join(sys.argv[1:] if argv is None else argv),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# Which forces can the DCF heads represent? ({data}, bundled split and configuration)", "",
             f"Command: `{result['command']}` ({result['date_utc']} UTC); see the module docstring.", "",
             "| target | inputs | head | K | seed | best epoch | train rel. RMSE | test rel. RMSE |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['inputs']} | {r['head']} | {r['K']} | {r['seed']} | {r['best_epoch']} | "
                     f"{r['train_rel_rmse']:.3f} | **{r['test_rel_rmse']:.3f}** |")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
