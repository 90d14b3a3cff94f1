"""fastfeat: direct covariant force prediction.

Cell-list neighbour lists and invariant (G2, G4) + covariant (V) features with
hand-written Numba kernels for CPU and CUDA.
"""

__version__ = "0.1.0"

from ._spec import FeatureSpec, SPEC_FORMAT_VERSION
from ._neighbors import NeighborList, neighbor_list
from ._features import Features, Featurizer, featurize

__all__ = [
    "FeatureSpec",
    "SPEC_FORMAT_VERSION",
    "NeighborList",
    "neighbor_list",
    "Features",
    "Featurizer",
    "featurize",
    "__version__",
]
