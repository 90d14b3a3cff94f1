"""Counting the atoms whose invariant features leave the training ranges: a Numba kernel on the CPU,
array expressions for CuPy.

Used by ``ForceEvaluator.outside_count`` on the features of its latest call, so an MD log can follow
extrapolation every record without featurizing again. NumPy reference:
:func:`fastfeat.runtime.extrapolation.extrapolation` (``len(ex.atoms)`` for the same tolerance).
"""

from __future__ import annotations

import os

from numba import njit

from fastfeat._numba_cache import ensure_writable_cache

ensure_writable_cache(os.path.dirname(os.path.abspath(__file__)))  # before the cache=True kernels below


@njit(cache=True)
def count_outside(g, species, lo, hi):
    """Atoms i with some column c where g[i, c] < lo[species[i], c] or g[i, c] > hi[species[i], c]
    (``lo``/``hi``: per element, the training range widened by the tolerance)."""
    n = 0
    for i in range(g.shape[0]):
        e = species[i]
        gi, lo_e, hi_e = g[i], lo[e], hi[e]
        out = 0
        for c in range(gi.shape[0]):  # no early exit: the loop vectorises (4x faster at 132 columns)
            x = gi[c]
            out |= (x < lo_e[c]) | (x > hi_e[c])
        n += out
    return n


#: elements (atoms x columns) of one chunk of count_outside_array: its temporaries, ~10 bytes per element, stay
#: at ~40 MB whatever the system (unchunked they were 13 GB at 10 million atoms and 132 columns)
CHUNK_ELEMENTS = 1 << 22


def count_outside_array(g, species, lo, hi, chunk_elements=CHUNK_ELEMENTS):
    """The same count as array operations (CuPy on a GPU; any NumPy-like module), a chunk of atoms at a time;
    one host read at the end."""
    n = g.shape[0]
    step = max(1, chunk_elements // max(1, g.shape[1]))
    total = 0
    for a in range(0, n, step):
        gs, s = g[a:a + step], species[a:a + step]
        total = total + ((gs < lo[s]) | (gs > hi[s])).any(axis=1).sum()
    return int(total)
