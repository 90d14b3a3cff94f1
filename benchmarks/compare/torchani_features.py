"""Features: fastfeat (invariant + covariant) vs TorchANI's AEV (forward; forward + autograd forces).

TorchANI: ``AEVComputer.like_1x(neighborlist="cell_list")`` (its pure-PyTorch "pyaev" strategy, no
compiled extensions), H C N O, float32, called as ``aev(species_idx, coords, cell=, pbc=)``.
The conservative path is forward + ``torch.autograd.grad((aev * w).sum(), coords)`` with a fixed
random w (the vector-Jacobian product a network's dE/dAEV would need; the network itself is not
timed). fastfeat: ``featurize(atoms, FeatureSpec.default(("H","C","N","O"), preset="ani1x"))``,
float32: the same 384 invariants (16 G2 per species, 32 G4 per species pair, rc 5.2 / 3.5 Å)
plus 64 covariant vectors, neighbour list included.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from benchmarks.compare._harness import interleaved_medians, main_for, ratio, row

TARGET_FORWARD = 30.0
_Z_TO_ANI = {1: 0, 6: 1, 7: 2, 8: 3}


def run(quick=False, threads=1):
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
    import torch
    from torchani.aev import AEVComputer

    import fastfeat
    from benchmarks.common import ani1x_spec, water_system

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    spec = ani1x_spec()
    aev = AEVComputer.like_1x(neighborlist="cell_list")
    sizes = [(3000, 3, 2)] if quick else [(3000, 9, 5), (100000, 3, 2)]
    rows, ratios, notes = [], [], []
    for n_target, rep_fwd, rep_grad in sizes:
        atoms = water_system(n_target)
        n = len(atoms)
        label = f"water {n}"
        species = torch.tensor([[_Z_TO_ANI[z] for z in atoms.numbers]], dtype=torch.long)
        coords = torch.tensor(atoms.positions[None], dtype=torch.float32)
        cell = torch.tensor(atoms.cell.array, dtype=torch.float32)
        pbc = torch.tensor([True, True, True])
        w = torch.randn(1, n, aev.out_dim if hasattr(aev, "out_dim") else 384,
                        generator=torch.Generator().manual_seed(0))

        def ani_forward():
            with torch.no_grad():
                return aev(species, coords, cell=cell, pbc=pbc)

        def ani_forces():
            x = coords.detach().clone().requires_grad_(True)
            out = aev(species, x, cell=cell, pbc=pbc)
            (g,) = torch.autograd.grad((out * w).sum(), x)
            return g

        def ff():
            return fastfeat.featurize(atoms, spec, dtype=np.float32)

        out = ani_forward()
        f = ff()
        assert out.shape[-1] == spec.n_invariant == 384, (out.shape, spec.n_invariant)
        # forward side by side, then forward+grad side by side (fastfeat re-timed in each group)
        t1 = interleaved_medians({"fastfeat": ff, "torchani forward": ani_forward}, rep_fwd)
        t2 = interleaved_medians({"fastfeat": ff, "torchani forward+autograd": ani_forces}, rep_grad)
        rows.append(row("fastfeat", "invariant+covariant (384 + 64×3)", label, n, t1["fastfeat"], n / t1["fastfeat"]["median_s"], "atoms/s"))
        rows.append(row("torchani", "AEV forward (384)", label, n, t1["torchani forward"], n / t1["torchani forward"]["median_s"], "atoms/s"))
        rows.append(row("fastfeat", "invariant+covariant (384 + 64×3) [grad group]", label, n, t2["fastfeat"], n / t2["fastfeat"]["median_s"], "atoms/s"))
        rows.append(row("torchani", "AEV forward + autograd forces", label, n, t2["torchani forward+autograd"],
                        n / t2["torchani forward+autograd"]["median_s"], "atoms/s"))
        ratios.append(ratio("features speed-up vs TorchANI AEV forward", label, n, t1["fastfeat"]["median_s"],
                            t1["torchani forward"]["median_s"], TARGET_FORWARD))
        ratios.append(ratio("features speed-up vs TorchANI AEV forward+autograd (conservative path)", label, n,
                            t2["fastfeat"]["median_s"], t2["torchani forward+autograd"]["median_s"]))
        del f, out
    notes.append(
        f"{threads} thread(s) for both (torch.set_num_threads, NUMBA_NUM_THREADS); TorchANI float32 'pyaev' "
        "strategy with its cell_list neighbour list (compiled cuaev/cell_list extensions not installed); "
        "fastfeat additionally computes 64 covariant vectors per atom"
    )
    return {"name": "torchani", "title": "Features vs TorchANI AEV", "rows": rows, "ratios": ratios, "notes": notes}


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
