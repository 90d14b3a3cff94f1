"""Probe: would a neighbour-resolved direct-force head close the oxide accuracy gap?

Not a fastfeat model (the DCF heads of DESIGN.md build F_i from atom i's own covariant vectors);
a prototype that measures how much a head with **pair coefficients** gains on the same data:

    F_i = Σ_j c_ij fc(r_ij) r̂_ij,   c_ij = MLP([h_i, h_j, rbf(r_ij)]),   h = per-element MLP(G)

with G the standardised invariants of the bundled preset (soft clip 5), h of width 32, 16 Gaussian
radial functions over 0.8 Å … rc, hidden 64 (per-element embedding: one layer; pair MLP: two),
AdamW 3e-3, cosine schedule, batch 4 structures, weights averaged (0.99), best validation epoch
kept. Exactly covariant and derivative-free like DCF, but every neighbour gets its own weight
that depends on both atoms' environments (angles included through G4), which DCF cannot express.
Same splits as the bundled models. Writes ``benchmarks/results/pair_head_probe_<data>.json``.

    python -m benchmarks.compare.pair_head_probe [--data li4p2o7] [--seeds 0 1] [--epochs 20] [--cutoff 5.2]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def _pairs(frames, fs, rc, torch):
    import fastfeat

    i_all, j_all, r_all = [], [], []
    for atoms, o in zip(frames, fs.offsets[:-1]):
        nl = fastfeat.neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, rc)
        i_all.append(nl.i + o)
        j_all.append(nl.j + o)
        r_all.append(nl.vectors)
    return (torch.from_numpy(np.concatenate(i_all)).long(), torch.from_numpy(np.concatenate(j_all)).long(),
            torch.from_numpy(np.concatenate(r_all)).float())


def _model(torch, n_in, n_el, rc, mu, sd, hidden=64, width=32, n_rbf=16):
    nn = torch.nn

    class PairHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.ModuleList([nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, width))
                                      for _ in range(n_el)])
            self.pair = nn.Sequential(nn.Linear(2 * width + n_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                      nn.SiLU(), nn.Linear(hidden, 1))
            self.register_buffer("mu", mu)
            self.register_buffer("sd", sd)
            self.register_buffer("r_s", torch.linspace(0.8, rc, n_rbf))

        def forward(self, g, sp, i, j, rv):
            z = 5.0 * torch.tanh((g - self.mu) / self.sd / 5.0)
            h = torch.zeros(len(g), width)
            for e in range(n_el):
                m = sp == e
                h[m] = self.emb[e](z[m])
            d = rv.norm(dim=1, keepdim=True)
            fc = 0.5 * (torch.cos(math.pi * d / rc) + 1.0)
            w = self.r_s[1] - self.r_s[0]
            rbf = torch.exp(-((d - self.r_s) ** 2) / (2.0 * w * w)) * fc
            c = self.pair(torch.cat([h[i], h[j], rbf], 1)) * fc
            return torch.zeros(len(g), 3).index_add_(0, i, c * rv / d)

    return PairHead()


def run(data, seeds, epochs, rc):
    import torch

    torch.set_num_threads(1)
    from fastfeat.train import datasets
    from fastfeat.train.bundle_models import bundled_config
    from fastfeat.train.cli import prepare_features
    from fastfeat.train.trainer import _ema_update

    feats, spec, _ = prepare_features(data, bundled_config("basis", data), log=lambda m: None)
    sets = {}
    for split, fs in feats.items():
        i, j, r = _pairs(datasets.load(data, split=split), fs, rc, torch)
        sets[split] = dict(g=torch.from_numpy(fs.invariant).float(), sp=torch.from_numpy(fs.species).long(),
                           t=torch.from_numpy(fs.target).float(), off=fs.offsets, i=i, j=j, r=r)
    tr = sets["train"]

    def batch(s, structs):
        off = s["off"]
        rows = np.concatenate([np.arange(off[k], off[k + 1]) for k in structs])
        keep = np.zeros(off[-1], bool)
        keep[rows] = True
        remap = np.full(off[-1], -1, np.int64)
        remap[rows] = np.arange(len(rows))
        pm = torch.from_numpy(keep)[s["i"]]
        rr = torch.from_numpy(rows)
        return (s["g"][rr], s["sp"][rr], torch.from_numpy(remap)[s["i"][pm]], torch.from_numpy(remap)[s["j"][pm]],
                s["r"][pm], s["t"][rr])

    def metrics(m, s):
        m.eval()
        with torch.no_grad():
            g, sp, i, j, r, t = batch(s, np.arange(len(s["off"]) - 1))
            e = m(g, sp, i, j, r) - t
        return float(e.abs().mean()), float(e.pow(2).mean().sqrt() / t.pow(2).mean().sqrt())

    rows = []
    n_struct = len(tr["off"]) - 1
    for seed in seeds:
        torch.manual_seed(seed)
        model = _model(torch, tr["g"].shape[1], spec.n_species, rc, tr["g"].mean(0), tr["g"].std(0) + 1e-6)
        ema = copy.deepcopy(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=3e-5)
        best = (math.inf, None, -1)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            perm = np.random.default_rng([seed, epoch]).permutation(n_struct)
            for b0 in range(0, n_struct, 4):
                g, sp, i, j, r, t = batch(tr, perm[b0:b0 + 4])
                loss = (model(g, sp, i, j, r) - t).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                _ema_update(ema, model, 0.99)
            sched.step()
            val = metrics(ema, sets["val"])[1]
            if val < best[0]:
                best = (val, copy.deepcopy(ema.state_dict()), epoch)
        ema.load_state_dict(best[1])
        mae, rel = metrics(ema, sets["test"])
        rows.append({"seed": seed, "best_epoch": best[2] + 1, "epochs": epochs, "val_rel_rmse": best[0],
                     "test_mae": mae, "test_rel_rmse": rel, "train_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"data": data, "cutoff": rc, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="li4p2o7", choices=["li4p2o7", "li4p2o7-water", "peo"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cutoff", type=float, default=5.2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = args.out or os.path.join(RESULTS, f"pair_head_probe_{args.data}.json")
    res = run(args.data, args.seeds, args.epochs, args.cutoff)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    for r in res["rows"]:
        print(f"{args.data} seed {r['seed']}: test MAE {r['test_mae']:.4f} eV/Å, rel. RMSE {r['test_rel_rmse']:.4f} "
              f"(best epoch {r['best_epoch']} of {r['epochs']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
