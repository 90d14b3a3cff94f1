"""Ctrl-C in the long loops of the runtime (MD, relaxation): stop at the end of a step, not in the middle.

A KeyboardInterrupt raised wherever Python happens to be leaves an MD engine with the positions of the next
step and the forces of an earlier one, or a relaxation without its structure. :class:`DeferredInterrupt`
turns the first SIGINT into a request the loop reads after each complete step; the loop then writes that
step and raises :class:`Interrupted`, a KeyboardInterrupt that carries the result so far.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["DeferredInterrupt", "Interrupted"]


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) at the end of a step, which was written to its outputs.

    Attributes
    ----------
    step : int
        The last step completed.
    result : MDResult or RelaxResult
        The state and log up to that step; ``result.stop_reason`` says it was interrupted. An MD engine
        holds that step's state, so ``MolecularDynamics.run`` goes on from it as if uninterrupted.
    """

    def __init__(self, message, step, result):
        super().__init__(message)
        self.step = step
        self.result = result


class DeferredInterrupt:
    """Context manager: inside it, the first SIGINT sets ``requested`` (the loop stops at the end of the current
    step); a second raises KeyboardInterrupt at once. Installed only where Python's default SIGINT handler is in
    place, in the main thread (elsewhere a handler cannot be set, or someone else handles SIGINT)."""

    def __init__(self):
        self.requested = False
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return False
