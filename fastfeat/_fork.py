"""The CPU kernels after ``fork()``: a clear error instead of an aborted child and a hung pool.

Numba runs the ``parallel=True`` kernels on its threading layer, here usually ``omp`` (GNU OpenMP),
which cannot be used in a child forked after the parent ran a parallel region: the child's first
kernel call prints "Terminating: fork() called from a process already using GNU OpenMP" and exits,
and a ``multiprocessing.Pool`` (fork is Linux's default start method) waits forever for its result.
A handler registered with :func:`os.register_at_fork` notes that case in the child, and every entry to
the CPU kernels (:func:`check`) then raises a RuntimeError that says what to do instead.
"""

from __future__ import annotations

import os
import sys

__all__ = ["check", "FORK_MESSAGE"]

FORK_MESSAGE = (
    "fastfeat's CPU kernels cannot run in a process forked after its parent ran them under Numba's GNU OpenMP "
    "threading layer (OpenMP is not fork-safe). Start worker processes with the 'spawn' or 'forkserver' method "
    "(multiprocessing.get_context('spawn'); models and calculators pickle as references to their files), or set "
    "NUMBA_THREADING_LAYER=workqueue (or install tbb) before the parent imports fastfeat"
)

# True in a child forked after the parent ran a parallel kernel under GNU OpenMP
forked_under_gomp = False


def _after_fork_in_child():
    global forked_under_gomp
    numba = sys.modules.get("numba")
    if numba is None or forked_under_gomp:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run in the parent: the child may start its own layer
        return
    if layer == "omp":
        from numba.np.ufunc import omppool

        forked_under_gomp = getattr(omppool, "openmp_vendor", "") == "GNU"


os.register_at_fork(after_in_child=_after_fork_in_child)


def check():
    """RuntimeError (:data:`FORK_MESSAGE`) in a child forked after GNU OpenMP ran in its parent."""
    if forked_under_gomp:
        raise RuntimeError(FORK_MESSAGE)
