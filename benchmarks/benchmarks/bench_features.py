"""Invariant (G2, G4) + covariant (V) features, ANI-1x-sized spec (384 + 64×3), liquid water."""

import numpy as np

import fastfeat

from ._shared import ATOM_COUNTS, common, devices, synchronize, to_device


class Features:
    """One-shot fastfeat.featurize (neighbour list included) of one water box."""

    params = (ATOM_COUNTS, devices())
    param_names = ["n_atoms", "device"]
    timeout = 600

    def setup(self, n_atoms, device):
        self.atoms = common.water_system(n_atoms)
        self.spec = common.ani1x_spec()
        self.device = device
        fastfeat.featurize(self.atoms, self.spec, device=device)  # JIT warm-up / cache load
        synchronize(device)

    def time_featurize(self, n_atoms, device):
        fastfeat.featurize(self.atoms, self.spec, device=self.device)
        synchronize(device)

    def peakmem_featurize(self, n_atoms, device):
        fastfeat.featurize(self.atoms, self.spec, device=self.device)
        synchronize(device)

    def track_output_mib(self, n_atoms, device):
        """Size of the outputs (invariant + covariant, float32): the yardstick of peakmem."""
        n = len(self.atoms)
        return n * (self.spec.n_invariant + 3 * self.spec.n_covariant) * 4 / 2**20

    track_output_mib.unit = "MiB"


class FeaturizerStep:
    """fastfeat.Featurizer called on slightly moved positions (MD step: neighbour list reused)."""

    params = (ATOM_COUNTS, devices())
    param_names = ["n_atoms", "device"]
    timeout = 600

    def setup(self, n_atoms, device):
        atoms = common.water_system(n_atoms)
        spec = common.ani1x_spec()
        self.fz = fastfeat.Featurizer(spec, device=device, skin=1.0)
        rng = np.random.default_rng(1)
        pos = atoms.positions + rng.uniform(-0.05, 0.05, size=atoms.positions.shape)
        self.positions = to_device(np.ascontiguousarray(pos), device)
        self.numbers = atoms.numbers
        self.cell = atoms.cell.array
        self.pbc = atoms.pbc
        self.device = device
        self.fz(to_device(atoms.positions, device), self.numbers, self.cell, self.pbc)  # build NL + warm-up
        self.fz(self.positions, self.numbers, self.cell, self.pbc)
        synchronize(device)

    def time_featurizer_step(self, n_atoms, device):
        self.fz(self.positions, self.numbers, self.cell, self.pbc)
        synchronize(device)


class PresetFeaturizerStep:
    """Featurizer call on a PEO frame (112 atoms, H C O; neighbour list reused) per FeatureSpec preset:
    the features of the bundled models ("angular-short": peo, "angular": the oxides) against "dense"."""

    params = (["dense", "angular-short", "angular"], devices())
    param_names = ["preset", "device"]
    timeout = 600

    def setup(self, preset, device):
        try:
            from fastfeat.train import datasets
        except ImportError as exc:  # an install without the data loader
            raise NotImplementedError(f"fastfeat.train.datasets unavailable: {exc}") from None
        atoms = datasets.load("peo", split="test")[0]
        spec = fastfeat.FeatureSpec.default(("H", "C", "O"), preset=preset)
        self.fz = fastfeat.Featurizer(spec, device=device, dtype=np.float32, skin=0.5)
        self.args = (to_device(np.ascontiguousarray(atoms.positions), device), atoms.numbers, atoms.cell.array,
                     atoms.pbc)
        self.device = device
        self.fz(*self.args)  # build the list, JIT warm-up
        synchronize(device)

    def time_featurizer_step(self, preset, device):
        self.fz(*self.args)
        synchronize(device)
