"""Conservative baseline for the DCF models: TorchANI AEVs + per-element MLPs, forces by autograd.

The peer the issue asks for: the same split of a bundled data set, per-element
MLPs of the same width as the bundled DCF models (hidden 64, 64, SiLU), input
TorchANI's ``AEVComputer.like_1x(num_species=S)`` (ANI-1x radial/angular
terms, cutoffs 5.2 / 3.5 Å, periodic cell list), an atomic energy per atom,
per-element self energies fitted by least squares, and the loss
``MSE(F) + w_E · MSE(E/N)`` with forces ``F = -∂E/∂r`` by autograd (a double
backward per step). Trained with AdamW and a cosine schedule fitted to the
same time budget on one CPU thread. Prints and writes the test force errors
and the ratio of the DCF model's test force MAE to the baseline's (read from
benchmarks/results/models.json).

    python benchmarks/compare/baseline_conservative.py --data li4p2o7 --time-limit 600 \\
        --out benchmarks/results/baseline_conservative.json
    python benchmarks/compare/baseline_conservative.py --refresh-ratios   # after retraining DCF models
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def _splits(name, seed):
    """train/val/test frames of a bundled dataset, or an 80/10/10 split of a structure file."""
    if os.path.exists(name):
        import ase.io

        frames = ase.io.read(name, index=":")
        perm = np.random.default_rng(seed).permutation(len(frames))
        n_te = n_va = max(1, len(frames) // 10)
        pick = lambda idx: [frames[i] for i in sorted(idx)]  # noqa: E731
        return {"train": pick(perm[n_va + n_te:]), "val": pick(perm[:n_va]), "test": pick(perm[n_va:n_va + n_te])}
    from fastfeat.train import datasets

    return {s: datasets.load(name, split=s) for s in ("train", "val", "test")}


class Structures:
    """Tensors of a list of ase.Atoms (one structure at a time: cells differ)."""

    def __init__(self, frames, symbols, torch):
        index = {s: k for k, s in enumerate(symbols)}
        self.items = []
        for a in frames:
            sp = torch.tensor([[index[s] for s in a.get_chemical_symbols()]], dtype=torch.long)
            self.items.append({
                "species": sp,
                "coords": torch.tensor(a.positions[None], dtype=torch.float32),
                "cell": torch.tensor(np.asarray(a.cell), dtype=torch.float32),
                "pbc": torch.tensor(np.asarray(a.pbc, dtype=bool)),
                "forces": torch.tensor(a.get_forces(), dtype=torch.float32),
                "energy": float(a.get_potential_energy()),
                "counts": np.bincount(sp[0].numpy(), minlength=len(symbols)),
            })

    def __len__(self):
        return len(self.items)


class AniModel:
    """AEV -> standardise -> per-element MLP -> atomic energies."""

    def __init__(self, n_species, hidden, torch):
        from torchani.aev import AEVComputer

        self.torch = torch
        self.aev = AEVComputer.like_1x(num_species=n_species, neighborlist="cell_list")
        self.n_species = n_species
        self.hidden = hidden
        self.nets = None

    def build(self, dim):
        torch = self.torch
        nets = []
        for _ in range(self.n_species):
            layers, w = [], dim
            for h in self.hidden:
                layers += [torch.nn.Linear(w, h), torch.nn.SiLU()]
                w = h
            layers.append(torch.nn.Linear(w, 1))
            nets.append(torch.nn.Sequential(*layers))
        self.nets = torch.nn.ModuleList(nets)
        self.mean = torch.zeros(self.n_species, dim)
        self.std = torch.ones(self.n_species, dim)
        self.self_energy = torch.zeros(self.n_species)

    def energy_forces(self, item, create_graph):
        torch = self.torch
        coords = item["coords"].clone().requires_grad_(True)
        aev = self.aev(item["species"], coords, cell=item["cell"], pbc=item["pbc"])[0]
        sp = item["species"][0]
        e_atoms = torch.zeros(sp.shape[0], dtype=aev.dtype)
        for s, net in enumerate(self.nets):
            idx = torch.nonzero(sp == s).reshape(-1)
            x = (aev.index_select(0, idx) - self.mean[s]) / self.std[s]
            e_atoms = e_atoms.index_add(0, idx, net(x).reshape(-1) + self.self_energy[s])
        energy = e_atoms.sum()
        (grad,) = torch.autograd.grad(energy, coords, create_graph=create_graph)
        return energy, -grad[0]


def fit_statistics(model, train, torch):
    with torch.no_grad():
        rows = [[] for _ in range(model.n_species)]
        for item in train.items:
            aev = model.aev(item["species"], item["coords"], cell=item["cell"], pbc=item["pbc"])[0]
            sp = item["species"][0]
            for s in range(model.n_species):
                rows[s].append(aev[sp == s])
        dim = rows[0][0].shape[1]
        model.build(dim)
        for s in range(model.n_species):
            x = torch.cat(rows[s])
            if len(x):
                model.mean[s] = x.mean(0)
                model.std[s] = x.std(0).clamp_min(1e-3 * float(x.std(0).max()) + 1e-12)
    counts = np.array([it["counts"] for it in train.items], dtype=np.float64)
    energies = np.array([it["energy"] for it in train.items])
    self_e, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    model.self_energy = torch.tensor(self_e, dtype=torch.float32)
    resid = energies - counts @ self_e
    return float(np.sqrt((resid**2).mean() / (counts.sum(1) ** 2).mean()))


def evaluate(model, data, torch):
    pred, ref, e_err = [], [], []
    for item in data.items:
        energy, forces = model.energy_forces(item, create_graph=False)
        pred.append(forces.detach().numpy())
        ref.append(item["forces"].numpy())
        e_err.append((float(energy) - item["energy"]) / item["species"].shape[1])
    p, r = np.concatenate(pred).astype(np.float64), np.concatenate(ref).astype(np.float64)
    err = p - r
    rmse = float(np.sqrt((err**2).mean()))
    return {"mae": float(np.abs(err).mean()), "rmse": rmse, "rel_rmse": rmse / float(np.sqrt((r**2).mean())),
            "energy_mae_per_atom": float(np.abs(e_err).mean()), "n_atoms": int(len(r))}


def _dcf_ratios(table):
    """Set each entry's DCF / baseline test force MAE ratios from benchmarks/results/models.json."""
    models_json = os.path.join(RESULTS, "models.json")
    if not os.path.exists(models_json):
        return
    with open(models_json, encoding="utf-8") as fh:
        models = json.load(fh)
    for name, result in table.items():
        dcf = models.get(name, {})
        result["dcf_over_baseline_mae"] = {head: rep["metrics"]["test"]["mae"] / result["test"]["mae"]
                                           for head, rep in dcf.items() if "test" in rep.get("metrics", {})}


def refresh_ratios(out):
    """Recompute the ratios of every stored baseline after the DCF models were retrained
    (the baselines' own figures depend only on the data split, which did not change)."""
    with open(out, encoding="utf-8") as fh:
        table = json.load(fh)
    _dcf_ratios(table)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    for name, result in sorted(table.items()):
        ratios = ", ".join(f"{h} {v:.2f}" for h, v in sorted(result.get("dcf_over_baseline_mae", {}).items()))
        print(f"{name}: baseline test MAE {result['test']['mae']:.4f} eV/Å; DCF / baseline MAE: {ratios}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="bundled dataset name (or a structure file: 80/10/10 split)")
    ap.add_argument("--refresh-ratios", action="store_true",
                    help="only recompute the DCF / baseline ratios of --out from benchmarks/results/models.json")
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--time-limit", type=float, default=600.0, help="training seconds")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--energy-weight", type=float, default=1.0, help="w_E of the loss (eV/atom)^2 vs (eV/Å)^2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(RESULTS, "baseline_conservative.json"))
    args = ap.parse_args(argv)
    if args.refresh_ratios:
        return refresh_ratios(args.out)
    if not args.data:
        ap.error("--data is required (or --refresh-ratios)")
    import torch

    from fastfeat.train.data import species_of

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = _splits(args.data, args.seed)
    symbols = species_of(splits.values())
    data = {s: Structures(f, symbols, torch) for s, f in splits.items()}
    model = AniModel(len(symbols), args.hidden, torch)
    t0 = time.perf_counter()
    fit_statistics(model, data["train"], torch)
    opt = torch.optim.AdamW(model.nets.parameters(), lr=args.lr, weight_decay=1e-5)
    # time one epoch's worth of steps on a few structures to size the cosine schedule
    train = data["train"]
    n_steps_epoch = math.ceil(len(train) / args.batch_size)

    def step(batch):
        loss = 0.0
        n_atoms = sum(train.items[i]["species"].shape[1] for i in batch)
        for i in batch:
            item = train.items[i]
            energy, forces = model.energy_forces(item, create_graph=True)
            n = item["species"].shape[1]
            loss = loss + ((forces - item["forces"]) ** 2).sum() / (3 * n_atoms) \
                + args.energy_weight * ((energy - item["energy"]) / n) ** 2 / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    rng = np.random.default_rng(args.seed)
    t_probe = time.perf_counter()
    probe = rng.permutation(len(train))[: 3 * args.batch_size]
    for b in range(0, len(probe), args.batch_size):
        step(probe[b:b + args.batch_size])
    per_step = (time.perf_counter() - t_probe) / 3
    budget = args.time_limit - (time.perf_counter() - t0)
    epochs = max(1, int(0.95 * budget / (per_step * n_steps_epoch)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=args.lr * 0.01)
    print(f"baseline {args.data}: species {list(symbols)}, AEV dim {model.mean.shape[1]}, "
          f"{sum(p.numel() for p in model.nets.parameters())} parameters, {per_step:.2f} s/step -> {epochs} epochs",
          file=sys.stderr, flush=True)
    best, best_state = math.inf, None
    for epoch in range(epochs):
        perm = rng.permutation(len(train))
        losses = [step(perm[b:b + args.batch_size]) for b in range(0, len(perm), args.batch_size)]
        sched.step()
        v = evaluate(model, data["val"], torch)
        if v["rmse"] < best:
            best = v["rmse"]
            best_state = {k: t.detach().clone() for k, t in model.nets.state_dict().items()}
        print(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4g} val force MAE {v['mae']:.4f} "
              f"RMSE {v['rmse']:.4f}  {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if time.perf_counter() - t0 > 1.1 * args.time_limit:
            break
    model.nets.load_state_dict(best_state)
    train_seconds = time.perf_counter() - t0
    test = evaluate(model, data["test"], torch)
    result = {"data": args.data, "model": "TorchANI AEVComputer.like_1x + per-element MLP, autograd forces",
              "hidden": args.hidden, "energy_weight": args.energy_weight, "epochs": epoch + 1,
              "train_seconds": train_seconds, "threads": args.threads, "test": test}
    table = {}
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            table = json.load(fh)
    table[args.data] = result
    _dcf_ratios(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
