"""Neighbour list (cell list, full list, cutoff 5.2 Å) on liquid water."""

import numpy as np

import fastfeat

from ._shared import ATOM_COUNTS, common, devices, synchronize, to_device

CUTOFF = 5.2


class NeighborList:
    """fastfeat.neighbor_list: i, j, shifts, vectors, distances of every pair."""

    params = (ATOM_COUNTS, devices())
    param_names = ["n_atoms", "device"]
    timeout = 600

    def setup(self, n_atoms, device):
        atoms = common.water_system(n_atoms)
        self.positions = to_device(np.ascontiguousarray(atoms.positions), device)
        self.cell = atoms.cell.array
        self.pbc = atoms.pbc
        self.device = device
        nl = fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, device=device)  # JIT warm-up
        synchronize(device)
        self.n_pairs = len(nl.i)
        del nl
        # sorted=True runs its own kernels (the row sort, k.sort_rows on the CPU): warm them too, so that
        # time_/peakmem_neighbor_list_sorted do not time their first call (cache load or compile)
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, sorted=True, device=device)
        synchronize(device)

    def time_neighbor_list(self, n_atoms, device):
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, device=device)
        synchronize(device)

    def time_neighbor_list_sorted(self, n_atoms, device):
        """sorted=True: each centre's pairs ordered by (j, shift) (in place on the CPU)."""
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, sorted=True, device=device)
        synchronize(device)

    def peakmem_neighbor_list_sorted(self, n_atoms, device):
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, sorted=True, device=device)
        synchronize(device)

    def track_pairs_per_atom(self, n_atoms, device):
        return self.n_pairs / len(self.positions)

    track_pairs_per_atom.unit = "pairs/atom"


class SparseBoxNeighborList:
    """fastfeat.neighbor_list where the atoms fill a small part of a large box: a water cluster in a
    1000 Å periodic box (periodic axes cut at the empty stretch), two clusters 1e4 Å apart without
    periodicity (empty stretches compressed), and the cluster in the 1000 Å box with 3 % more atoms as
    water molecules scattered over it (density-equalised axes). Compare with NeighborList at about the
    same atom count: a capped grid whose bins span whole clusters makes these quadratic (fastfeat._box)."""

    params = ([1000, 10000], ["periodic_box_1000", "clusters_1e4_apart", "scattered_molecules_box_1000"], devices())
    param_names = ["n_atoms", "layout", "device"]
    timeout = 600

    def setup(self, n_atoms, layout, device):
        w = common.water_system(n_atoms)
        if layout == "periodic_box_1000":
            pos, self.cell, self.pbc = w.positions, np.eye(3) * 1000.0, np.array([True] * 3)
        elif layout == "scattered_molecules_box_1000":
            rng = np.random.default_rng(0)
            m = max(1, n_atoms // 100)
            vapour = (w.positions[:3] - w.positions[0] + rng.uniform(0.0, 1000.0, (m, 1, 3))).reshape(-1, 3)
            pos = np.vstack([w.positions - w.positions.mean(axis=0) + 500.0, vapour])
            self.cell, self.pbc = np.eye(3) * 1000.0, np.array([True] * 3)
        else:
            pos = np.vstack([w.positions, w.positions + 1e4])
            self.cell, self.pbc = np.zeros((3, 3)), np.array([False] * 3)
        self.positions = to_device(np.ascontiguousarray(pos), device)
        self.device = device
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, device=device)  # JIT warm-up
        synchronize(device)

    def time_neighbor_list(self, n_atoms, layout, device):
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, device=device)
        synchronize(device)
