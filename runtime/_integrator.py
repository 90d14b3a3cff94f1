"""The per-step array work of the MD engine on the CPU, fused into Numba kernels.

On NumPy arrays a step of :class:`fastfeat.runtime.MolecularDynamics` is some twenty small array
operations (~40 µs for 112 atoms, a few percent of a step of a bundled model); these kernels do
the same arithmetic in three calls. The kicks and drifts are the same floating-point operations in
the same order as the array expressions of the generic path (which CuPy runs), so positions and
velocities are bit-identical to it; the work and the kinetic-energy sums add in a different order
(rounding only). NumPy reference: the generic path of ``MolecularDynamics._run``.
"""

from __future__ import annotations

import math
import os

from numba import njit

from fastfeat._numba_cache import ensure_writable_cache

ensure_writable_cache(os.path.dirname(os.path.abspath(__file__)))  # before the cache=True kernels below


@njit(cache=True)
def kick_drift(x, v, f, kick, x_prev, v_prev, dt, langevin, c1, noise, noise_scale):
    """Save x, v into x_prev, v_prev; half kick v += f kick; then NVE: x += v dt; Langevin (BAOAB):
    x += v dt/2, v = c1 v + noise noise_scale, x += v dt/2 (``noise`` already drawn, N(0, 1))."""
    half_dt = 0.5 * dt
    for i in range(x.shape[0]):
        k = kick[i, 0]
        s = noise_scale[i, 0]
        for c in range(3):
            x_prev[i, c] = x[i, c]
            v_prev[i, c] = v[i, c]
            vi = v[i, c] + f[i, c] * k
            if langevin:
                xi = x[i, c] + vi * half_dt
                vi = vi * c1 + noise[i, c] * s
                x[i, c] = xi + vi * half_dt
            else:
                x[i, c] = x[i, c] + vi * dt
            v[i, c] = vi


@njit(cache=True)
def max_abs(f):
    """Largest |component| of f; NaN if any entry is NaN (inf if inf and none is NaN)."""
    m = 0.0
    for i in range(f.shape[0]):
        for c in range(3):
            a = abs(f[i, c])
            if not a <= m:  # a larger value, or NaN
                if math.isnan(a):
                    return a
                m = a
    return m


@njit(cache=True)
def work_kick(f_old, f, x, x_prev, v, kick, masses):
    """The work of the step, (f_old + f) / 2 . (x - x_prev), and the half kick v += f kick with the new
    forces; returns (work, sum of m v^2 over atoms and components) after the kick."""
    w = 0.0
    mv2 = 0.0
    for i in range(x.shape[0]):
        k = kick[i, 0]
        m = masses[i]
        for c in range(3):
            dx = x[i, c] - x_prev[i, c]
            w += (f_old[i, c] + f[i, c]) * dx
            vi = v[i, c] + f[i, c] * k
            v[i, c] = vi
            mv2 += m * (vi * vi)
    return 0.5 * w, mv2
