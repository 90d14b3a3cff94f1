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

    def time_neighbor_list(self, n_atoms, device):
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, device=device)
        synchronize(device)

    def time_neighbor_list_sorted(self, n_atoms, device):
        """sorted=True: each centre's pairs ordered by (j, shift) (in place on the CPU)."""
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, sorted=True, device=device)
        synchronize(device)

    def peakmem_neighbor_list_sorted(self, n_atoms, device):
        fastfeat.neighbor_list(self.positions, self.cell, self.pbc, CUTOFF, sorted=True, device=device)

    def track_pairs_per_atom(self, n_atoms, device):
        return self.n_pairs / len(self.positions)

    track_pairs_per_atom.unit = "pairs/atom"
