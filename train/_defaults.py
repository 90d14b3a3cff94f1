"""Model choices and defaults shared by :mod:`.model` and :mod:`.config`.

Kept free of torch so that reading and validating a config (``fastfeat train``'s first step) works,
and fails with a clear message, on an install without the ``[train]`` extra.
"""

HEADS = ("projection", "basis")
ACTIVATIONS = ("silu", "tanh")

#: default regularisation of the projection head (see :mod:`.model`)
EPS_REL = 1e-1
EPS_ABS = 1e-6
#: soft clip of standardised inputs, z -> c·tanh(z/c) (see StaggeredNetwork)
INPUT_CLIP = 5.0
