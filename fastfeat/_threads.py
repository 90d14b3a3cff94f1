"""The CPU kernels and Python threads.

Numba runs the ``parallel=True`` kernels on its threading layer. The ``omp`` and ``tbb`` layers take
parallel calls from several Python threads at once; the ``workqueue`` layer (the one the README
advises for forked worker processes, and Numba's fallback when neither OpenMP nor TBB is there)
aborts the whole process when two threads enter it together ("Concurrent access has been detected").
Every public CPU entry (``featurize``, ``neighbor_list``, ``Featurizer``) therefore runs under
:func:`cpu_kernels`, which holds one process-wide lock while that layer is (or may become) the one in
use, and nothing otherwise.

:class:`Featurizer` objects hold per-call state (their neighbour list and output buffers); one object
used by two threads at once is refused with :data:`SHARED_FEATURIZER` rather than computed wrong.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

__all__ = ["SHARED_FEATURIZER", "InUse", "cpu_kernels"]

SHARED_FEATURIZER = (
    "this fastfeat.Featurizer is being called by another thread: a Featurizer keeps its neighbour list and "
    "output buffers between calls, so each thread needs its own (fastfeat.featurize and ForceModel may be "
    "shared by threads)"
)

_LOCK = threading.RLock()  # re-entrant: a locked entry may call another (ForceModel -> featurize)


def _new_lock_in_child():
    # a child forked while another thread of the parent held the lock would wait for it forever
    global _LOCK
    _LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_in_child)
_FREE = contextlib.nullcontext()
_serialise = None  # None: no parallel kernel has run yet, so the layer is not known


def cpu_kernels():
    """Context manager around CPU kernel calls: the process-wide lock under Numba's workqueue layer
    (or before the first parallel kernel has picked a layer), a no-op under omp or tbb."""
    global _serialise
    if _serialise is False:
        return _FREE
    if _serialise is None:
        numba = sys.modules.get("numba")
        try:
            layer = numba.threading_layer() if numba is not None else None
        except ValueError:  # no parallel kernel has run yet: serialise until it is known
            layer = None
        if layer is None:
            return _LOCK
        _serialise = layer == "workqueue"
        if not _serialise:
            return _FREE
    return _LOCK


class InUse:
    """``with guard:`` around a call of an object that keeps per-call state: a second thread entering while
    the first is inside gets a RuntimeError with ``message`` instead of sharing the state. Copies (pickle,
    deepcopy) get a guard of their own."""

    __slots__ = ("_lock", "message")

    def __init__(self, message):
        self._lock = threading.Lock()
        self.message = message

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(self.message)

    def __exit__(self, *exc):
        self._lock.release()

    def __reduce__(self):
        return InUse, (self.message,)

