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
    # (size, repeats, warm-up rounds): at 100 k the JIT is warm from the 3 k part and TorchANI has
    # nothing to warm up, so no untimed round there (one TorchANI autograd call takes ~1 min)
    sizes = [(3000, 3, 1)] if quick else [(3000, 9, 1), (100000, 2, 0)]
    rows, ratios, notes = [], [], []
    for n_target, repeats, warmup in sizes:
        atoms = water_system(n_target)
        n = len(atoms)
        label = f"water {n}"
        species = torch.tensor([[_Z_TO_ANI[z] for z in atoms.numbers]], dtype=torch.long)
        coords = torch.tensor(atoms.positions[None], dtype=torch.float32)
        cell = torch.tensor(atoms.cell.array, dtype=torch.float32)
        pbc = torch.tensor([True, True, True])
        w = torch.randn(1, n, spec.n_invariant, generator=torch.Generator().manual_seed(0))

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

        if n_target == sizes[0][0]:
            out = ani_forward()
            assert out.shape[-1] == spec.n_invariant == 384, (out.shape, spec.n_invariant)
            ff()
            del out
        t = interleaved_medians({"fastfeat": ff, "torchani forward": ani_forward,
                                 "torchani forward+autograd": ani_forces}, repeats, warmup=warmup)
        rows.append(row("fastfeat", "invariant+covariant (384 + 64×3)", label, n, t["fastfeat"], n / t["fastfeat"]["median_s"], "atoms/s"))
        rows.append(row("torchani", "AEV forward (384)", label, n, t["torchani forward"], n / t["torchani forward"]["median_s"], "atoms/s"))
        rows.append(row("torchani", "AEV forward + autograd forces", label, n, t["torchani forward+autograd"],
                        n / t["torchani forward+autograd"]["median_s"], "atoms/s"))
        ratios.append(ratio("features speed-up vs TorchANI AEV forward", label, n, t["fastfeat"]["median_s"],
                            t["torchani forward"]["median_s"], TARGET_FORWARD))
        ratios.append(ratio("features speed-up vs TorchANI AEV forward+autograd (conservative path)", label, n,
                            t["fastfeat"]["median_s"], t["torchani forward+autograd"]["median_s"]))
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
