"""Geometry relaxation with forces only: FIRE, as ASE's ``ase.optimize.FIRE``.

A direct-force model has no potential energy, and ASE's optimisers (FIRE, BFGS, ...) ask the
calculator for one in their log step even without a log file (ASE 3.29), so they stop at once
with :class:`fastfeat.runtime.Calculator`. :func:`relax` runs the FIRE algorithm of Bitzek et al.
(Phys. Rev. Lett. 97, 170201, 2006) exactly as ASE implements it (same parameters and defaults,
``downhill_check=False``, the same convergence test: the largest per-atom force norm below
``fmax``), with forces only, so a structure relaxed here follows the path ASE's FIRE would take
with the same forces. The cell stays fixed (no stress). ASE constraints on the structure
(``FixAtoms``, ``FixCartesian``, ...) are applied to positions and forces as ASE applies them.

Python API::

    from fastfeat.runtime import relax
    result = relax("peo", atoms, fmax=0.05, steps=500, trajectory="relax.extxyz")
    result.converged, result.fmax, result.atoms

A relaxation with a direct-force model ends where the predicted forces vanish; the model was
trained on forces, not on energies, so nothing guarantees that point is a minimum of the
reference energy, and a model far from its training data may not converge at all.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from fastfeat._validation import check_int, check_positive

from ._interrupt import DeferredInterrupt, Interrupted
from .md import _host, _open_for_writing, check_outputs

__all__ = ["relax", "RelaxResult", "RelaxInstabilityError", "FIRE_DEFAULTS"]

#: ASE's FIRE parameters (ase.optimize.FIRE), used unchanged. dt and dtmax are in ASE's FIRE units
#: (x += dt * v, v += dt * F with unit masses), not femtoseconds.
FIRE_DEFAULTS = dict(dt=0.1, maxstep=0.2, dtmax=1.0, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99)


@dataclass
class RelaxResult:
    """Outcome of :func:`relax`.

    Attributes
    ----------
    atoms : ase.Atoms
        The structure at the last positions: a copy with the input's cell, pbc, masses, tags and
        constraints (not its ``info`` or other per-atom arrays such as momenta, which described the
        input frame), its forces attached (``atoms.get_forces()`` equals ``forces``).
    converged : bool
        Whether the largest per-atom force norm fell below ``fmax``.
    steps : int
        FIRE steps taken (force calls: ``steps + 1``).
    fmax : float
        Largest per-atom force norm at ``atoms`` (eV/Å).
    forces : (N, 3) float64 array
        Forces at ``atoms`` (eV/Å), constraints applied.
    wall_s : float
    log : dict of arrays
        ``step`` and ``fmax`` (eV/Å) at the start, every ``every`` steps and at the end.
    stopped_at, stop_reason
        Set when the forces became unusable (:class:`RelaxInstabilityError`); else None.
    """

    atoms: object
    converged: bool
    steps: int
    fmax: float
    forces: np.ndarray
    wall_s: float
    log: dict = field(default_factory=dict)
    stopped_at: int | None = None
    stop_reason: str | None = None


class RelaxInstabilityError(RuntimeError):
    """Relaxation stopped: the forces became non-finite, exceeded ``max_force`` or the force call failed.

    Attributes
    ----------
    step : int
        The step whose forces were bad (0: the starting structure, nothing written).
    reason : str
    result : RelaxResult
        The last good structure (``result.steps == step - 1``), also the trajectory's last frame.
    """

    def __init__(self, message, step, reason, result):
        super().__init__(message)
        self.step = step
        self.reason = reason
        self.result = result


def _fmax(f) -> float:
    """Largest per-atom force norm (as ASE's optimisers measure convergence)."""
    return float(np.sqrt((f * f).sum(axis=1).max())) if len(f) else 0.0


def relax(model, atoms, *, fmax=0.05, steps=1000, maxstep=FIRE_DEFAULTS["maxstep"], dt=FIRE_DEFAULTS["dt"],
          dtmax=FIRE_DEFAULTS["dtmax"], max_force=1000.0, trajectory=None, every=1, log=None, progress=False,
          device="cpu") -> RelaxResult:
    """Relax ``atoms`` (fixed cell) with forces only, by ASE's FIRE algorithm.

    Parameters
    ----------
    model : ForceModel, str or os.PathLike, or callable
        A loaded model, a model file, a bundled model's name, or a force function
        ``f(positions (N, 3) Å) -> forces (N, 3) eV/Å``.
    atoms : ase.Atoms
        Starting structure. Not modified. Its constraints are applied.
    fmax : float
        Convergence: every atom's force norm below this (eV/Å).
    steps : int
        Largest number of FIRE steps (>= 0).
    maxstep, dt, dtmax : float
        FIRE's largest move per step (Å, the norm over all atoms, as in ASE), initial and largest
        time step (ASE's FIRE units); the other FIRE parameters are ASE's (:data:`FIRE_DEFAULTS`).
    max_force : float
        Stop when a force component exceeds this (eV/Å) or is NaN (math.inf: no limit).
    trajectory : str or os.PathLike, optional
        extxyz file (name ending in .extxyz or .xyz): the start, every ``every`` steps and the end,
        with forces and the info keys ``step`` and ``fmax``.
    every : int
        Trajectory, log and record interval (steps, >= 1).
    log : str or os.PathLike, optional
        Text log: ``step fmax_eV/A dt`` every ``every`` steps.
    progress : bool or file object
        A progress line (step, fmax) about once a second, to stderr (``True``) or the stream.
        ``trajectory``, ``log`` (and a command's ``--out``) must be different files.
    device : {"cpu", "cuda"}
        Used when ``model`` is a path or a name.

    Returns
    -------
    RelaxResult
        Check ``result.converged``: reaching ``steps`` first is not an error.

    Raises
    ------
    TypeError, ValueError
        Bad arguments (before any force is computed), a model that does not predict forces, or
        a force function returning another shape than (N, 3).
    OSError
        ``trajectory`` or ``log`` cannot be written (before any force is computed).
    RelaxInstabilityError
        Non-finite forces, a component above ``max_force``, or a failing force call after the start.
        An exception of the first force call (the starting structure's fault, e.g. overlapping atoms)
        propagates as it is, before any file is written.
    Interrupted
        Ctrl-C (SIGINT, in the main thread): the relaxation stops at the end of the step in progress,
        writes it to the trajectory and log, and raises this ``KeyboardInterrupt``, whose ``result`` holds
        that step's structure. A second Ctrl-C stops at once.
    """
    from .model import _check_atoms, resolve_model

    _check_atoms(atoms, "atoms")
    fmax = check_positive(fmax, "`fmax`")
    steps = check_int(steps, "`steps`", 0)
    every = check_int(every, "`every`", 1)
    maxstep = check_positive(maxstep, "`maxstep`")
    dt = check_positive(dt, "`dt`")
    dtmax = check_positive(dtmax, "`dtmax`")
    max_force = check_positive(max_force, "`max_force`", allow_inf=True)
    check_outputs(trajectory, log, "`trajectory`", "`log`")
    if not (isinstance(progress, bool) or hasattr(progress, "write")):
        raise TypeError(f"`progress` must be a bool or a file object, got {type(progress).__name__} {progress!r}")
    if callable(model):
        force_fn = model
    else:
        model = resolve_model(model, device=device)
        force_fn = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)  # ValueError unless forces

    # the structure itself, without what belonged to the input frame (its info, momenta, stored labels)
    work = atoms.copy()
    work.calc = None
    work.info = {}
    for key in list(work.arrays):
        if key not in ("numbers", "positions", "masses", "tags"):
            del work.arrays[key]
    xp = getattr(force_fn, "xp", np)

    def forces_at(x):
        """(raw, constrained) forces at x (the positions of `work`); constraints as Atoms.get_forces applies
        them. A failing call raises; a wrong shape is a ValueError."""
        raw = np.array(_host(force_fn(xp.asarray(x))), dtype=np.float64)
        if raw.shape != x.shape:
            raise ValueError(f"the force function returned shape {raw.shape}, expected {x.shape}")
        f = raw.copy()
        for c in work.constraints:
            c.adjust_forces(work, f)
        return raw, f

    def unusable(f):
        """Why forces f (the raw ones: a constraint can zero a NaN on a fixed atom) are unusable, or None."""
        big = float(np.abs(f).max()) if f.size else 0.0
        if not math.isfinite(big):
            return "the forces are not finite (NaN or inf)"
        if big > max_force:
            return f"a force component reached {big:.4g} eV/Å > max_force={max_force:g} eV/Å"
        return None

    records = {"step": [], "fmax": []}
    t0 = time.perf_counter()
    stream = (sys.stderr if progress is True else progress) if progress else None
    # a terminal gets one line rewritten in place; a file or pipe (a captured log) one line per report
    cr, end = ("\r", "") if stream is not None and hasattr(stream, "isatty") and stream.isatty() else ("", "\n")
    traj_fh = log_fh = interrupt = None

    def record(step, x, f, fm, dt_now):
        records["step"].append(step)
        records["fmax"].append(fm)
        if traj_fh is not None:
            _write_frame(traj_fh, work, x, f, step, fm)
        if log_fh is not None:
            log_fh.write(f"{step} {fm:.6g} {dt_now:.6g}\n")
            log_fh.flush()  # a run killed from outside leaves its log complete up to the last record

    def result(x, raw, f, nsteps, converged, stopped_at=None, reason=None):
        from ase.calculators.singlepoint import SinglePointCalculator

        final = work.copy()
        final.set_positions(x, apply_constraint=False)
        # the unconstrained forces: atoms.get_forces() applies the constraints (once) and gives `forces`
        final.calc = SinglePointCalculator(final, forces=raw.copy())
        return RelaxResult(
            atoms=final, converged=converged, steps=nsteps, fmax=_fmax(f), forces=f.copy(),
            wall_s=time.perf_counter() - t0, log={k: np.asarray(v) for k, v in records.items()},
            stopped_at=stopped_at, stop_reason=reason,
        )

    # the starting forces before any file is opened: a model that fails at once leaves no file behind, and
    # an exception of this first call (the starting structure's fault, e.g. overlapping atoms) propagates
    x = work.get_positions()
    raw, f = forces_at(x)
    bad = unusable(raw)
    if bad:
        res = result(x, raw, f, 0, False, 0, bad)
        raise RelaxInstabilityError(f"the forces of the starting structure are unusable: {bad}; nothing was written",
                                    0, bad, res)
    try:
        if trajectory is not None:
            traj_fh = _open_for_writing(os.fspath(trajectory), "`trajectory`")
        if log is not None:
            log_fh = _open_for_writing(os.fspath(log), "`log`")
            log_fh.write("# step fmax_eV/A dt\n")
        fm = _fmax(f)
        record(0, x, f, fm, dt)
        p = FIRE_DEFAULTS
        a, dt_now, n_pos, vel = p["astart"], dt, 0, None
        nsteps = 0
        converged = fm < fmax
        t_last = t0
        interrupt = DeferredInterrupt().__enter__()  # left in `finally`
        while not converged and nsteps < steps:
            g = f.ravel()
            if vel is None:
                vel = np.zeros(g.size)
            else:  # ase.optimize.FIRE.step, term by term
                vf = np.vdot(g, vel)
                g2 = np.vdot(g, g)
                if vf > 0.0:
                    vel = (1.0 - a) * vel + a * g / np.sqrt(g2) * np.sqrt(np.vdot(vel, vel))
                    if n_pos > p["Nmin"]:
                        dt_now = min(dt_now * p["finc"], dtmax)
                        a *= p["fa"]
                    n_pos += 1
                else:
                    vel[:] *= 0.0
                    a = p["astart"]
                    dt_now *= p["fdec"]
                    n_pos = 0
            vel += dt_now * g
            dr = dt_now * vel
            normdr = np.sqrt(np.vdot(dr, dr))
            if normdr > maxstep:
                dr = maxstep * dr / normdr
            x_prev, raw_prev, f_prev, fm_prev = x, raw, f, fm
            work.set_positions(x + dr.reshape(-1, 3))  # constraints applied as ASE's set_x does
            x = work.get_positions()
            nsteps += 1
            try:
                raw, f = forces_at(x)
                bad = unusable(raw)
            except Exception as exc:  # a failing call (a wrong shape too) ends the run cleanly
                bad = f"the force call failed: {type(exc).__name__}: {exc}"
            if bad:  # clean stop: the last good structure back in place, written, returned with the error
                work.set_positions(x_prev, apply_constraint=False)
                last = nsteps - 1
                if last % every != 0:
                    record(last, x_prev, f_prev, fm_prev, dt_now)
                res = result(x_prev, raw_prev, f_prev, last, False, nsteps, bad)
                where = f"; the last good structure (step {last}) is in {os.fspath(trajectory)!r}" \
                    if traj_fh is not None else ""
                raise RelaxInstabilityError(f"relaxation stopped at step {nsteps}: {bad}{where}", nsteps, bad, res)
            fm = _fmax(f)
            converged = fm < fmax
            if nsteps % every == 0 or converged or nsteps == steps:
                record(nsteps, x, f, fm, dt_now)
            if stream is not None:
                now = time.perf_counter()
                if now - t_last > 1.0:
                    t_last = now
                    print(f"{cr}relax: step {nsteps}/{steps}, fmax {fm:.4g} eV/Å", end=end, file=stream, flush=True)
            if interrupt.requested and not converged and nsteps < steps:  # Ctrl-C: step nsteps is complete
                if nsteps % every != 0:
                    record(nsteps, x, f, fm, dt_now)
                if log_fh is not None:
                    log_fh.write(f"# interrupted (Ctrl-C) after step {nsteps}\n")
                if stream is not None and cr:
                    print(file=stream)  # ends the line rewritten in place
                res = result(x, raw, f, nsteps, False, None, "interrupted (Ctrl-C)")
                where = f"; its structure is the last frame of {os.fspath(trajectory)!r}" if traj_fh is not None else ""
                raise Interrupted(f"relaxation interrupted after step {nsteps} (fmax {fm:.4g} eV/Å){where}",
                                  nsteps, res)
        if stream is not None:
            state = "converged" if converged else "not converged"
            print(f"{cr}relax: step {nsteps}/{steps}, fmax {fm:.4g} eV/Å ({state}, target {fmax:g})",
                  file=stream, flush=True)
        return result(x, raw, f, nsteps, converged)
    finally:
        if interrupt is not None:
            interrupt.__exit__(None, None, None)
        for fh in (traj_fh, log_fh):
            if fh is not None:
                fh.close()


def _write_frame(fh, work, x, f, step, fm):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = work.copy()
    frame.set_constraint()
    frame.set_positions(x, apply_constraint=False)
    frame.info.update(step=int(step), fmax=float(fm))
    frame.calc = SinglePointCalculator(frame, forces=f.copy())
    ase.io.write(fh, frame, format="extxyz")
    fh.flush()
