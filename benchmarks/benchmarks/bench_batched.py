"""Batched featurization: many small water boxes (99 atoms each) in one featurize call."""

import fastfeat

from ._shared import common, devices, synchronize

#: Total atoms ≈ 99 × n_structures: 1e2, 1e3, 1e4, 1e5.
N_STRUCTURES = [1, 10, 100, 1000]


class BatchedFeaturization:
    """fastfeat.featurize(list_of_atoms, spec): all structures in one call, outputs concatenated."""

    params = (N_STRUCTURES, devices())
    param_names = ["n_structures", "device"]
    timeout = 600

    def setup(self, n_structures, device):
        self.frames = [common.water_box(33, seed=s) for s in range(n_structures)]
        self.spec = common.ani1x_spec()
        fastfeat.featurize(self.frames[:2], self.spec, device=device)  # JIT warm-up
        synchronize(device)

    def time_featurize_batch(self, n_structures, device):
        fastfeat.featurize(self.frames, self.spec, device=device)
        synchronize(device)

    def peakmem_featurize_batch(self, n_structures, device):
        fastfeat.featurize(self.frames, self.spec, device=device)
        synchronize(device)
