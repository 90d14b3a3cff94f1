"""Compatibility shims applied before numba.cuda is imported.

numba-cuda <= 0.30 registers an overload for ``numpy.row_stack``, which NumPy
2.5 removed (it was an alias of ``numpy.vstack``); importing numba.cuda then
fails with AttributeError. Restoring the alias is harmless.
"""

import numpy as np

if not hasattr(np, "row_stack"):  # pragma: no cover - depends on the NumPy version
    np.row_stack = np.vstack
