"""Molecular dynamics with direct forces: velocity Verlet (NVE) and Langevin (BAOAB).

Units: positions Å, velocities Å/fs, masses amu, forces eV/Å, time fs,
temperature K. The step loop touches only preallocated arrays (NumPy on the
CPU, CuPy when the force function lives on a GPU); no ASE object is made
inside it.

Python API::

    from fastfeat.runtime import run_md
    result = run_md("peo", atoms, steps=5000, dt=0.5, temperature=300,
                    out="traj.extxyz", every=100, log="md.log")

or, with any force function ``f(positions (N,3) Å) -> forces (N,3) eV/Å``::

    md = MolecularDynamics(f, positions, masses, dt=0.5, temperature=300)
    result = md.run(1000)
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from ase import units
from ase.data import atomic_masses, atomic_numbers

from fastfeat._io import check_extxyz_path, check_output_path
from fastfeat._validation import check_friction, check_int, check_number, check_positive, check_timestep

from ._integrator import kick_drift, max_abs, work_kick
from ._interrupt import DeferredInterrupt, Interrupted

__all__ = [
    "MolecularDynamics",
    "MDResult",
    "MDInstabilityError",
    "run_md",
    "maxwell_boltzmann",
    "kinetic_energy",
    "temperature",
    "ExtxyzWriter",
    "check_trajectory_path",
    "check_outputs",
    "check_distinct_outputs",
    "default_max_temperature",
]

#: eV/(Å·amu) -> Å/fs²
ACCEL = units.fs ** 2
#: Boltzmann constant, eV/K
KB = units.kB
ENSEMBLES = ("langevin", "nve")
#: Langevin friction, 1/fs, unless given (see MolecularDynamics)
DEFAULT_FRICTION = 0.05


# --------------------------------------------------------------------- helpers
def kinetic_energy(velocities, masses) -> float:
    """Kinetic energy (eV) of velocities (N, 3) Å/fs and masses (N,) amu."""
    v = np.asarray(velocities)
    return 0.5 * float(np.dot(masses, np.einsum("ij,ij->i", v, v))) / ACCEL


def temperature(velocities, masses, dof=None) -> float:
    """Instantaneous temperature (K), 2 KE / (dof kB); ``dof`` defaults to 3N - 3, the degrees of
    freedom of velocities without centre-of-mass motion (as :func:`maxwell_boltzmann` draws them and
    as NVE keeps them); pass 3N for a thermostat that acts on every atom (Langevin)."""
    n = len(masses)
    dof = 3 * n - 3 if dof is None else dof
    return 2.0 * kinetic_energy(velocities, masses) / (max(dof, 1) * KB)


def maxwell_boltzmann(masses, temperature_K, rng, dof=None, rescale=True) -> np.ndarray:
    """Velocities (N, 3) Å/fs drawn from the Maxwell-Boltzmann distribution.

    The centre-of-mass velocity is removed; with ``rescale`` the velocities
    are scaled so that the instantaneous temperature (``dof`` degrees of
    freedom, default 3N - 3) equals ``temperature_K`` exactly.
    """
    m = np.asarray(masses, dtype=np.float64)
    n = len(m)
    if temperature_K <= 0 or n == 0:
        return np.zeros((n, 3))
    sigma = np.sqrt(KB * temperature_K / m) * units.fs  # Å/fs
    v = rng.standard_normal((n, 3)) * sigma[:, None]
    if n > 1:
        v -= (m @ v) / m.sum()
    if rescale:
        dof = max(3 * n - 3, 1) if dof is None else dof
        t_now = temperature(v, m, dof)
        if t_now > 0:
            v *= math.sqrt(temperature_K / t_now)
    return v


def _max_abs(a) -> float:
    """Largest |component| of a force array; NaN if any entry is NaN (inf if inf)."""
    return float(max(a.max(), -a.min())) if a.size else 0.0


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


class MDInstabilityError(RuntimeError):
    """MD stopped: forces became non-finite or exceeded ``max_force``, the force
    call failed, or the temperature exceeded ``max_temperature``.

    Attributes
    ----------
    step : int
        The step whose forces were bad.
    reason : str
    result : MDResult
        State and log up to the last good step (``result.steps_done == step - 1``),
        whose frame was written to the trajectory; ``result.stopped_at == step``.
        When the forces at the starting positions are already bad, ``step`` is the
        starting step, no step was run (``result.steps_run == 0``), the log is
        empty and no file was written.
    """

    def __init__(self, message, step, reason, result):
        super().__init__(message)
        self.step = step
        self.reason = reason
        self.result = result


@dataclass
class MDResult:
    """Outcome of :meth:`MolecularDynamics.run`.

    Attributes
    ----------
    steps_done : int
        Steps completed in total (the engine's step counter).
    steps_run : int
        Steps completed by this ``run`` call.
    n_atoms : int
    dt : float
        Time step (fs).
    ensemble : str
    wall_s : float
        Wall time of the step loop (the first force call, which may compile
        kernels, is not included).
    positions, velocities, forces : (N, 3) float64 ndarray
        Final state (Å, Å/fs, eV/Å); the last good one if the run stopped.
    log : dict of (L,) ndarray
        Every ``every`` steps: ``step``, ``time_fs``, ``temperature_K``,
        ``kinetic_eV``, ``max_force`` (eV/Å) and, in NVE, ``ke_minus_work_eV``:
        kinetic energy minus the work done by the forces along the path
        (trapezoidal rule). By the work-energy theorem it is constant for
        *any* force field up to integration error, so its drift measures the
        time step's error, not non-conservative forces (for conservative
        forces it is the total energy minus the initial potential energy).
        With a model that holds training feature ranges (and the model's own
        force function, as ``run_md`` uses), ``outside_training``: atoms whose
        invariant features lie outside them (``ForceModel.extrapolation``;
        -1 for the last good frame of a stopped run, not measured).
    stopped_at : int or None
        Step with bad forces, if the run stopped early.
    stop_reason : str or None
    n_rebuilds : int or None
        Neighbour-list builds during this call (when the force function reports them; the first call's count
        includes the build for the initial forces).
    """

    steps_done: int
    steps_run: int
    n_atoms: int
    dt: float
    ensemble: str
    wall_s: float
    positions: np.ndarray
    velocities: np.ndarray
    forces: np.ndarray
    log: dict = field(default_factory=dict)
    stopped_at: int | None = None
    stop_reason: str | None = None
    n_rebuilds: int | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps_run / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def atom_steps_per_s(self) -> float:
        return self.n_atoms * self.steps_per_s

    @property
    def ns_per_day(self) -> float:
        return self.steps_per_s * self.dt * 1e-6 * 86400.0


# ------------------------------------------------------------------ extxyz out
class ExtxyzWriter:
    """Fast extended-XYZ writer (readable by ``ase.io.read``).

    Each frame holds species, positions (Å), momenta (ASE units, so
    ``atoms.get_velocities()`` works after reading), forces (eV/Å) and the
    info keys ``step``, ``time_fs``, ``temperature_K``; masses too when they
    are not ASE's defaults (isotopes), so velocities read back right; and
    ``outside_training`` (atoms outside the model's training feature ranges)
    when the caller measured it for the frame.

    The file is opened (and created) at construction, so a path that cannot
    be written fails before any MD step. Its name must end in ``.extxyz`` or
    ``.xyz`` (see :func:`check_trajectory_path`).
    """

    def __init__(self, path, symbols, masses, cell, pbc, what="trajectory `out`"):
        self.path = check_trajectory_path(path, what)
        self._fh = _open_for_writing(self.path, what)
        self._symbols = np.asarray(symbols, dtype=object)
        self._p_scale = np.asarray(masses, dtype=np.float64)[:, None] / units.fs
        cell = np.asarray(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        lattice = ""
        if np.any(cell != 0):
            lattice = 'Lattice="' + " ".join(f"{x:.10g}" for x in cell.ravel()) + '" '
        # masses other than ASE's defaults (isotopes) are written, so that a frame reads back with its
        # velocities (momenta / masses) and restarts exactly
        masses = np.asarray(masses, dtype=np.float64)
        custom = len(masses) and not np.array_equal(
            masses, atomic_masses[[atomic_numbers.get(str(sym), 0) for sym in self._symbols]])
        self._mass_cols = 1 if custom else 0
        self._head = (
            f"{len(self._symbols)}\n{lattice}Properties=species:S:1:pos:R:3"
            + (":masses:R:1" if custom else "") + ":momenta:R:3:forces:R:3 "
            + 'pbc="' + " ".join("T" if p else "F" for p in pbc) + '"'
        )
        line = "%-2s" + " %17.10f" * 3 + (" %.17g" if custom else "") + " %16.9e" * 3 + " %16.9e" * 3
        self._body = "\n".join([line] * len(self._symbols))
        self._rows = np.empty((len(self._symbols), 10 + self._mass_cols), dtype=object)
        self._rows[:, 0] = self._symbols
        if custom:
            self._rows[:, 4] = masses

    def write(self, step, time_fs, temperature_K, positions, velocities, forces, outside_training=None):
        rows = self._rows
        c = 4 + self._mass_cols
        rows[:, 1:4] = positions
        rows[:, c:c + 3] = velocities * self._p_scale
        rows[:, c + 3:c + 6] = forces
        # repr of a Python float: exact (time at a ns with 0.5 fs steps keeps its step) and always
        # read back as a float (never as an int, as "300" would be)
        head = f"{self._head} step={step} time_fs={float(time_fs)!r} temperature_K={float(temperature_K)!r}"
        if outside_training is not None:
            head += f" outside_training={int(outside_training)}"
        head += "\n"
        self._fh.write(head + (self._body % tuple(rows.ravel())) + "\n")

    def flush(self):
        self._fh.flush()

    def close(self):
        if not self._fh.closed:
            self._fh.close()


def check_trajectory_path(path, what="trajectory `out`"):
    """``path`` as a str if it ends in .extxyz or .xyz (any case), else ValueError naming ``what``
    (:func:`fastfeat._io.check_extxyz_path`: trajectories are written as extended XYZ text)."""
    return check_extxyz_path(path, what)


def check_outputs(trajectory, log, trajectory_what="trajectory `out`", log_what="`log`"):
    """The output checks of an MD run, creating nothing: ``trajectory`` must end in .extxyz/.xyz
    (:func:`check_trajectory_path`), and it and ``log`` (each optional) must be writable
    (:func:`fastfeat._io.check_output_path`)."""
    if trajectory is not None:
        check_trajectory_path(trajectory, trajectory_what)
    check_distinct_outputs((trajectory, trajectory_what), (log, log_what))
    check_output_path(trajectory, trajectory_what)
    check_output_path(log, log_what)


def check_distinct_outputs(*named):
    """ValueError when two of the (path, what) pairs name the same file (None paths are skipped): each
    output is written on its own, so a shared file would interleave or replace them."""
    seen = {}
    for path, what in named:
        if path is None:
            continue
        key = os.path.normcase(os.path.realpath(os.fspath(path)))
        if key in seen:
            raise ValueError(f"{seen[key]} and {what} are the same file {os.fspath(path)!r}; give each its own; "
                             "nothing was run")
        seen[key] = what


def default_max_temperature(temperature_K) -> float:
    """The automatic ``max_temperature``: max(5000 K, 10 x the target temperature)."""
    return max(5000.0, 10.0 * float(temperature_K))


def _open_for_writing(path, what):
    """Open a text file for writing; OSError naming the argument and the cause."""
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        parent = os.path.dirname(os.path.abspath(path))
        hint = ""
        if not os.path.isdir(parent):
            hint = f" (directory {parent!r} does not exist)"
        elif not os.access(parent, os.W_OK):
            hint = f" (directory {parent!r} is not writable)"
        raise type(exc)(f"cannot write {what} {path!r}: {exc.strerror}{hint}; nothing was run") from None


# ----------------------------------------------------------------- the engine
class MolecularDynamics:
    """Velocity Verlet (``"nve"``) or Langevin BAOAB (``"langevin"``) dynamics.

    Parameters
    ----------
    force_fn : callable
        ``force_fn(positions) -> forces``: (N, 3) float64 Å in, (N, 3) eV/Å
        out. May return an internal buffer (it is copied). If it has an
        ``xp`` attribute (``cupy``), positions and velocities live on that
        device for the whole run; if it has ``n_rebuilds`` it is reported.
    positions : (N, 3) array
        Initial positions, Å.
    masses : (N,) array
        Masses, amu (> 0).
    dt : float
        Time step, fs (> 0); default 0.5, as ``fastfeat md --dt`` (direct forces heat the system, and
        hydrogen motion needs it).
    temperature : float
        Target temperature (Langevin) and initial Maxwell-Boltzmann temperature, K (>= 0).
    ensemble : {"langevin", "nve"}
    friction : float
        Langevin friction γ, 1/fs (> 0 for Langevin; unused in NVE, >= 0). The default 0.05 (a 20 fs
        velocity relaxation time) is stronger than usual for conservative force
        fields on purpose: direct forces heat the system (they are not a
        gradient), and with 0.01 the bundled peo model ran away within 0.5 ps
        while 0.05 held it near the target temperature.
    seed : int
        Seeds the initial velocities and the Langevin noise (>= 0). With ``step`` > 0 (a restart) the
        generator is seeded from (seed, step), so a run continued from a frame draws noise independent of
        the original run's even with the same seed.
    velocities : (N, 3) array, optional
        Initial velocities in Å/fs; default Maxwell-Boltzmann at ``temperature``
        (centre-of-mass motion removed, rescaled to exactly ``temperature``).
        NVE temperatures count 3N - 3 degrees of freedom, which assumes no
        centre-of-mass motion: remove it from velocities you pass for NVE.
    remove_net_force : bool
        Subtract the mean force from every atom each step, so the total force
        is zero and momentum is conserved (direct forces do not guarantee it).
    max_force : float
        Largest force component (eV/Å) accepted; beyond it, or on NaN/inf,
        the run stops cleanly (see :class:`MDInstabilityError`).
    max_temperature : float, optional
        Largest instantaneous kinetic temperature (K) accepted; beyond it
        the run stops cleanly, like ``max_force`` (a time step too large for
        the forces, or runaway heating). Default None: max(5000 K, 10 x
        ``temperature``); ``math.inf`` disables the check.
    symbols, cell, pbc
        Only used to write trajectories (extxyz).
    step : int
        Step number of the initial state (>= 0; default 0): records, the trajectory and ``steps_done``
        count on from it, e.g. in a run restarted from a trajectory frame.
    time_fs : float
        Time of the initial state, fs (default 0.0): a record at step k is at
        ``time_fs + (k - step) * dt``.
    """

    def __init__(self, force_fn, positions, masses, *, dt=0.5, temperature=300.0, ensemble="langevin",
                 friction=DEFAULT_FRICTION, seed=0, velocities=None, remove_net_force=False, max_force=1000.0,
                 max_temperature=None, symbols=None, cell=None, pbc=False, step=0, time_fs=0.0):
        if not callable(force_fn):
            raise TypeError(f"`force_fn` must be callable, got {type(force_fn).__name__}")
        positions = np.array(_host(positions), dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"`positions` must have shape (N, 3), got {positions.shape}")
        n = positions.shape[0]
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
        if len(bad):
            raise ValueError(f"`positions` must be finite, got {positions[bad[0]].tolist()} for atom {int(bad[0])}")
        masses = np.array(masses, dtype=np.float64)
        if masses.shape != (n,):
            raise ValueError(f"`masses` must have shape ({n},) to match `positions`, got {masses.shape}")
        bad = np.flatnonzero(~((masses > 0) & np.isfinite(masses)))
        if len(bad):
            raise ValueError(f"`masses` must be finite and > 0 amu, got {masses[bad[0]]} for atom {int(bad[0])}")
        check_timestep(dt, "`dt`")
        check_number(temperature, "`temperature`", minimum=0.0)
        if ensemble not in ENSEMBLES:
            raise ValueError(f"`ensemble` must be one of {list(ENSEMBLES)}, got {ensemble!r}")
        if ensemble == "langevin":
            check_friction(friction, "`friction`")
        else:  # not used in NVE, but no nonsense either
            check_number(friction, "`friction`", minimum=0.0)
        check_positive(max_force, "`max_force`")
        if max_temperature is None:
            max_temperature = default_max_temperature(temperature)
        else:
            check_positive(max_temperature, "`max_temperature`", allow_inf=True)
        check_int(seed, "`seed`", 0)
        step = check_int(step, "`step`", 0)
        time_fs = check_number(time_fs, "`time_fs`")

        self.force_fn = force_fn
        self.xp = xp = getattr(force_fn, "xp", np)
        self.n_atoms = n
        self.dt = float(dt)
        self.temperature = float(temperature)
        self.ensemble = ensemble
        self.friction = float(friction)
        self.remove_net_force = bool(remove_net_force)
        self.max_force = float(max_force)
        self.max_temperature = float(max_temperature)
        self.masses = masses
        self.symbols = list(symbols) if symbols is not None else ["X"] * n
        self.cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        self.pbc = pbc
        # NVE starts without centre-of-mass motion (3N - 3 thermal dof; with remove_net_force the total
        # momentum stays zero, otherwise a net force shows up as heating); Langevin's thermostat acts on
        # every atom, the centre of mass included (3N)
        self.dof = max(3 * n - 3, 1) if ensemble == "nve" else max(3 * n, 1)
        # a restart (step > 0) seeds from (seed, step): a run continued from a frame with the same seed does not
        # replay the thermostat noise the original run drew from that seed
        rng = np.random.default_rng(seed if step == 0 else [seed, step])
        if velocities is None:
            # the centre-of-mass motion is removed, so 3N - 3 dof carry the energy: scaled to exactly
            # `temperature` over those (Langevin's 3N-dof reading starts (3N - 3) / 3N of it)
            v = maxwell_boltzmann(masses, self.temperature, rng, dof=max(3 * n - 3, 1))
        else:
            v = np.array(_host(velocities), dtype=np.float64)
            if v.shape != (n, 3):
                raise ValueError(f"`velocities` must have shape ({n}, 3), got {v.shape}")
            if not np.isfinite(v).all():
                raise ValueError("`velocities` must be finite")
            t_start = 2.0 * kinetic_energy(v, masses) / (self.dof * KB)
            if t_start > self.max_temperature:
                raise ValueError(
                    f"`velocities` correspond to {t_start:.4g} K, above `max_temperature`={self.max_temperature:g} K"
                )
        if xp is np:
            self._noise_rng = rng
        else:
            self._noise_rng = xp.random.RandomState(int(rng.integers(2 ** 31)))
        self.x = xp.asarray(positions)
        self.v = xp.asarray(v)
        self.f = None  # forces at self.x, computed at the first run (its shape is checked then)
        self.step = step
        self._step0, self._time0 = step, time_fs  # the initial state's step and time (a restart's)
        self.work = 0.0  # work done by the forces since step 0 (eV), tracked in NVE
        self._rebuilds0 = None  # the force function's list-build count when the current run() began

    # ---------------------------------------------------------------- helpers
    def _forces_into(self, out):
        """Evaluate forces at self.x into out; return max |component| (NaN if non-finite)."""
        f = self.force_fn(self.x)
        shape = getattr(f, "shape", None)  # numpy or CuPy
        if shape is None:
            shape = np.shape(f)  # a list, a scalar ...
        if tuple(shape) != (self.n_atoms, 3):
            raise ValueError(
                f"`force_fn` must return forces of shape ({self.n_atoms}, 3) (one row per atom), got {tuple(shape)}"
            )
        out[...] = f
        if self.remove_net_force:
            out -= out.mean(axis=0)
        return _max_abs(out)

    def current_temperature(self) -> float:
        return temperature(_host(self.v), self.masses, self.dof)

    # -------------------------------------------------------------------- run
    def run(self, steps, *, trajectory=None, log=None, every=100, progress=False) -> MDResult:
        """Advance ``steps`` steps.

        Parameters
        ----------
        steps : int
            Number of steps (>= 0).
        trajectory : str or os.PathLike, optional
            extxyz file (name ending in .extxyz or .xyz), (re)written by this
            call: the current frame, then one every ``every`` steps (and the
            last good frame if the run stops).
        log : str or os.PathLike, optional
            Text log, one line every ``every`` steps.
        every : int
            Trajectory/log/record interval (steps, >= 1), counted from the
            start of this call: a second ``run`` records its own first frame
            and then every ``every`` of its steps, whatever the step number
            the engine had reached.
        progress : bool or file object
            Print a progress line (steps, temperature, atom-steps/s, ns/day) to
            stderr (``True``) or the given stream.

        Returns
        -------
        MDResult

        Raises
        ------
        ValueError
            ``trajectory`` does not end in .extxyz/.xyz (before any step), or
            the first force call returned a shape other than (N, 3).
        OSError
            ``trajectory`` or ``log`` cannot be written (before any step).
        MDInstabilityError
            Forces became NaN/inf or exceeded ``max_force``, the force call
            failed, or the temperature exceeded ``max_temperature``; the
            trajectory and log hold everything up to the last good step.
            Initial forces that are NaN/inf or above ``max_force`` raise it
            before any file is written.
        Interrupted
            Ctrl-C (SIGINT, in the main thread): the run stops at the end of
            the step in progress, writes that step's frame and log line and
            raises this ``KeyboardInterrupt``; the engine holds that step's
            state, so ``run`` can go on from it. A second Ctrl-C interrupts
            at once (the state may then be mid-step).

        The trajectory and log are flushed at every record, so a run killed
        from outside (a batch system's time limit) leaves them complete up to
        the last record.

        An exception of the first force call (at the starting positions, e.g.
        overlapping atoms) concerns the input: it propagates unchanged, and no
        file has been created or truncated by then.
        """
        steps = check_int(steps, "`steps`", 0)
        every = check_int(every, "`every`", 1)
        check_outputs(trajectory, log, "`trajectory`")
        # the force function counts its list builds over its life: a result reports those of this call
        self._rebuilds0 = getattr(self.force_fn, "n_rebuilds", None)
        if self.f is None:
            # before any file is opened: a structure the model cannot start from leaves no empty trajectory
            # (an exception of this first call, e.g. overlapping atoms, concerns the input and propagates)
            f = self.xp.empty((self.n_atoms, 3))
            fmax = self._forces_into(f)
            if not fmax <= self.max_force:
                what = "not finite" if math.isnan(fmax) else f"too large ({fmax:.4g} eV/Å > max_force={self.max_force:g})"
                reason = f"the initial forces are {what}"
                raise MDInstabilityError(
                    f"{reason}; the structure or the model is unsuitable (step {self.step}); nothing was written",
                    self.step, reason, self._result(0, 0.0, self._records(), f, self.step, reason))
            self.f = f
        writer = logfh = None
        try:
            if trajectory is not None:
                writer = ExtxyzWriter(trajectory, self.symbols, self.masses, self.cell, self.pbc, "`trajectory`")
            if log is not None:
                logfh = _open_for_writing(os.fspath(log), "log")
            stream = sys.stderr if progress is True else (progress or None)
            with DeferredInterrupt() as interrupt:
                return self._run(int(steps), int(every), writer, logfh, stream, interrupt)
        finally:
            if writer is not None:
                writer.close()
            if logfh is not None and not logfh.closed:
                logfh.close()

    def _run(self, steps, every, writer, logfh, stream, interrupt):
        xp = self.xp
        n = self.n_atoms
        nve = self.ensemble == "nve"
        # atoms outside the model's training feature ranges, from the features of the latest force call
        # (ForceEvaluator.outside_count; None for a force function or a model without ranges)
        outside = getattr(self.force_fn, "outside_count", None)
        if outside is not None and outside() is None:
            outside = None
        records = self._records(outside is not None)
        if logfh is not None:
            cols = "step time_fs temperature_K kinetic_eV max_force_eV/A" + (" ke_minus_work_eV" if nve else "") \
                + (" outside_training" if outside is not None else "")
            logfh.write(f"# fastfeat md: {n} atoms, dt={self.dt} fs, ensemble={self.ensemble}, "
                        f"T={self.temperature} K\n# {cols}\n")

        f = xp.empty((n, 3))
        f_new = xp.empty((n, 3))
        f[...] = self.f  # computed by run() before the files were opened
        fmax = _max_abs(f)

        def record(step, x, v, f_arr, fmax_val, latest=True):
            """``latest``: the force function's last call was at ``x`` (not so after a stop's restore)."""
            vh = _host(v)
            ke = kinetic_energy(vh, self.masses)
            t = 2.0 * ke / (self.dof * KB)
            time_fs = self._time0 + (step - self._step0) * self.dt
            row = [step, time_fs, t, ke, fmax_val]
            for key, val in zip(records, row):
                records[key].append(val)
            extra = ""
            n_out = None
            if nve:
                records["ke_minus_work_eV"].append(ke - self.work)
                extra = f" {ke - self.work:.8f}"
            if outside is not None:
                n_out = outside() if latest else -1  # -1: not measured
                records["outside_training"].append(n_out)
                extra += f" {n_out}"
                if n_out < 0:
                    n_out = None  # the frame carries no count
            if logfh is not None:
                logfh.write(f"{step} {time_fs:.4f} {t:.3f} {ke:.8f} {fmax_val:.5g}{extra}\n")
                logfh.flush()
            if writer is not None:
                writer.write(step, time_fs, t, _host(x), vh, _host(f_arr), n_out)
                writer.flush()

        record(self.step, self.x, self.v, f, fmax)

        dt = self.dt
        half_dt = 0.5 * dt
        kick = xp.asarray(0.5 * dt * ACCEL / self.masses)[:, None]
        c1 = math.exp(-self.friction * dt) if not nve else 1.0  # NVE: unused
        noise_scale = xp.asarray(math.sqrt(1.0 - c1 * c1) * np.sqrt(KB * self.temperature / self.masses) * units.fs)[:, None]
        x, v = self.x, self.v
        x_prev = xp.empty_like(x)
        v_prev = xp.empty_like(v)
        tmp = xp.empty_like(x)
        noise = xp.empty_like(x)
        rng = self._noise_rng
        force_fn = self.force_fn
        remove_net = self.remove_net_force
        max_force = self.max_force
        max_t = self.max_temperature
        # T > max_t  <=>  sum(m v^2) > max_t * dof * kB * ACCEL (v in Å/fs, m in amu)
        mv2_limit = max_t * self.dof * KB * ACCEL
        m_flat = xp.asarray(np.repeat(self.masses, 3))
        check_t = math.isfinite(max_t) and n > 0
        work_prev = self.work
        on_host = xp is np
        if on_host:  # compile (or load from the cache) the fused kernels now, not inside the timed loop
            kick_drift(x[:0], v[:0], f[:0], kick[:0], x_prev[:0], v_prev[:0], dt, not nve, c1, noise[:0],
                       noise_scale[:0])
            max_abs(f_new[:0])
            work_kick(f[:0], f_new[:0], x[:0], x_prev[:0], v[:0], kick[:0], self.masses[:0])
        start_step = self.step
        stop = None
        t0 = time.perf_counter()
        t_last = t0
        for k in range(1, steps + 1):
            if on_host:  # the same arithmetic as below, fused (see _integrator)
                if not nve:
                    rng.standard_normal(out=noise)
                kick_drift(x, v, f, kick, x_prev, v_prev, dt, not nve, c1, noise, noise_scale)
            else:
                x_prev[...] = x
                v_prev[...] = v
                xp.multiply(f, kick, out=tmp)
                v += tmp
                if nve:
                    xp.multiply(v, dt, out=tmp)
                    x += tmp
                else:
                    xp.multiply(v, half_dt, out=tmp)
                    x += tmp
                    noise[...] = rng.standard_normal((n, 3))
                    v *= c1
                    noise *= noise_scale
                    v += noise
                    xp.multiply(v, half_dt, out=tmp)
                    x += tmp
            try:
                f_new[...] = force_fn(x)
            except Exception as exc:  # any failure of the force call stops the run cleanly
                stop = (k, f"the force evaluation failed ({type(exc).__name__}: {exc})")
                break
            if remove_net:
                f_new -= f_new.mean(axis=0)
            fmax = max_abs(f_new) if on_host else _max_abs(f_new)
            if not fmax <= max_force:
                what = "NaN or inf" if math.isnan(fmax) else f"{fmax:.4g} eV/Å > max_force={max_force:g}"
                stop = (k, f"the forces became unphysical ({what})")
                break
            work_prev = self.work
            if on_host:
                work, mv2 = work_kick(f, f_new, x, x_prev, v, kick, self.masses)
                f, f_new = f_new, f
                if nve:
                    self.work += work
            else:
                if nve:
                    xp.subtract(x, x_prev, out=tmp)
                    dx = tmp.ravel()
                    self.work += 0.5 * float(xp.vdot(f.ravel(), dx) + xp.vdot(f_new.ravel(), dx))
                f, f_new = f_new, f
                xp.multiply(f, kick, out=tmp)
                v += tmp
                if check_t:
                    xp.multiply(v, v, out=tmp)
                    mv2 = float(xp.dot(m_flat, tmp.ravel()))
            if check_t:
                if not mv2 <= mv2_limit:  # also NaN
                    t_bad = mv2 / (self.dof * KB * ACCEL)
                    f, f_new = f_new, f  # f: the forces at x_prev again
                    self.work = work_prev
                    stop = (k, f"the temperature became unphysical ({t_bad:.4g} K > max_temperature={max_t:g} K); "
                               f"either the time step is too large for these forces (try a smaller dt: `--dt`, "
                               f"now {dt:g} fs) or the structure left what the model was trained on "
                               f"(direct forces can then pump energy in; compare with the training data)")
                    break
            if k % every == 0:
                self.step = start_step + k
                record(self.step, x, v, f, fmax)
            if stream is not None and (k & 63) == 0:
                now = time.perf_counter()
                if now - t_last > 1.0:
                    t_last = now
                    self._progress(stream, k, steps, now - t0)
            if interrupt.requested:  # Ctrl-C: step k is complete, stop here
                steps = k
                break
        wall = time.perf_counter() - t0
        if stop is None:
            self.step = start_step + steps
            if steps % every != 0:
                record(self.step, x, v, f, fmax)
            self.f = f.copy()
            if stream is not None:
                self._progress(stream, steps, steps, wall, final=True)
            if interrupt.requested:
                reason = "interrupted (Ctrl-C)"
                if logfh is not None:
                    logfh.write(f"# {reason} after step {self.step}\n")
                result = self._result(steps, wall, records, f, None, reason)
                where = f"; its frame is the last in {writer.path!r}" if writer is not None else ""
                raise Interrupted(f"MD interrupted after step {self.step}{where}", self.step, result)
            return self._result(steps, wall, records, f, None, None)

        # clean stop: restore and save the last good state (step k - 1)
        k, reason = stop
        x[...] = x_prev
        v[...] = v_prev
        self.step = start_step + k - 1
        self.f = f.copy()
        if (k - 1) % every != 0:
            record(self.step, x, v, f, _max_abs(f), latest=False)
        bad_step = start_step + k
        if logfh is not None:
            logfh.write(f"# stopped at step {bad_step}: {reason}; last good step {self.step}\n")
        if stream is not None:
            self._progress(stream, k - 1, steps, wall, final=True)
        result = self._result(k - 1, wall, records, f, bad_step, reason)
        where = f"; the last good frame (step {self.step}) is in {writer.path!r}" if writer is not None else ""
        raise MDInstabilityError(f"MD stopped at step {bad_step}: {reason}{where}", bad_step, reason, result)

    def _progress(self, stream, k, steps, elapsed, final=False):
        rate = k / elapsed if elapsed > 0 else 0.0
        t = self.current_temperature()
        ns_day = rate * self.dt * 1e-6 * 86400.0
        line = (f"step {k:>8d}/{steps}  T {t:8.1f} K  {rate * self.n_atoms:11.4g} atom-steps/s  "
                f"{rate:9.1f} steps/s  {ns_day:8.3f} ns/day")
        tty = hasattr(stream, "isatty") and stream.isatty()
        stream.write(("\r" + line + ("\n" if final else "")) if tty else line + "\n")
        stream.flush()

    def _records(self, outside=False):
        """Empty per-record columns of the log (one list per quantity)."""
        keys = ("step", "time_fs", "temperature_K", "kinetic_eV", "max_force")
        keys += ("ke_minus_work_eV",) if self.ensemble == "nve" else ()
        return {k: [] for k in keys + (("outside_training",) if outside else ())}

    def _result(self, steps_run, wall, records, f, stopped_at, reason):
        nrb = getattr(self.force_fn, "n_rebuilds", None)
        if nrb is not None and self._rebuilds0 is not None:
            nrb = nrb - self._rebuilds0
        return MDResult(
            steps_done=self.step,
            steps_run=steps_run,
            n_atoms=self.n_atoms,
            dt=self.dt,
            ensemble=self.ensemble,
            wall_s=wall,
            positions=_host(self.x).copy(),
            velocities=_host(self.v).copy(),
            forces=_host(f).copy(),
            log={k: np.asarray(v) for k, v in records.items()},
            stopped_at=stopped_at,
            stop_reason=reason,
            n_rebuilds=int(nrb) if nrb is not None else None,
        )


# ------------------------------------------------------------ convenience API
def run_md(model, atoms, steps, *, dt=0.5, temperature=300.0, ensemble="langevin", friction=DEFAULT_FRICTION, seed=0,
           out=None, every=100, log=None, remove_net_force=False, max_force=1000.0, max_temperature=None,
           progress=False, velocities=None, device="cpu", step=0, time_fs=0.0) -> MDResult:
    """Run MD of ``atoms`` with a fastfeat model.

    Parameters
    ----------
    model : ForceModel, str or os.PathLike, or callable
        A loaded model, a model file, a bundled model's name, or a force
        function ``f(positions) -> forces``.
    atoms : ase.Atoms
        Initial structure (positions Å, masses amu, cell, pbc). Not modified.
    steps, dt, temperature, ensemble, friction, seed, remove_net_force, max_force, max_temperature, step, time_fs
        See :class:`MolecularDynamics` (``step``, ``time_fs``: where the count and the clock start, e.g. a
        restart's ``atoms.info["step"]`` and ``atoms.info["time_fs"]``, which ``fastfeat md --keep-velocities``
        passes).
    out, log, every, progress
        See :meth:`MolecularDynamics.run` (``out`` is its ``trajectory``: an
        extxyz file whose name ends in .extxyz or .xyz). Output files are
        checked (nothing created) before the model is loaded or any force is computed.
    velocities : "atoms" or (N, 3) array, optional
        "atoms" uses ``atoms.get_velocities()`` (converted to Å/fs); ValueError
        if ``atoms`` has no stored momenta. Default Maxwell-Boltzmann at
        ``temperature``.
    device : {"cpu", "cuda"}
        Used when ``model`` is a path or a name.

    Returns
    -------
    MDResult

    Raises
    ------
    ValueError
        Bad arguments, ``out`` not ending in .extxyz/.xyz, ``velocities="atoms"``
        without stored momenta, or a model that does not predict forces.
    OSError
        ``out`` or ``log`` cannot be written.
    MDInstabilityError, Interrupted
        See :meth:`MolecularDynamics.run`.
    """
    from .model import _check_atoms, resolve_model

    _check_atoms(atoms, "atoms")
    if atoms.constraints:
        raise ValueError(f"`atoms` has constraints {atoms.constraints}; fastfeat md does not apply constraints")
    if isinstance(velocities, str):
        if velocities != "atoms":
            raise ValueError(f"`velocities` must be 'atoms', an (N, 3) array or None, got {velocities!r}")
        if not atoms.has("momenta"):
            raise ValueError(
                "`velocities`='atoms' (--keep-velocities) but the structure has no velocities (no momenta stored); "
                "drop it to draw Maxwell-Boltzmann velocities at `temperature`"
            )
        velocities = atoms.get_velocities() * units.fs
    # fail on bad or unwritable outputs before any expensive work; nothing is created or truncated until the
    # run starts (an existing trajectory survives a call that fails on its arguments or model)
    check_outputs(out, log)
    if callable(model):
        force_fn = model
    else:
        model = resolve_model(model, device=device)
        force_fn = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)  # ValueError unless forces
    md = MolecularDynamics(
        force_fn, atoms.positions, atoms.get_masses(), dt=dt, temperature=temperature, ensemble=ensemble,
        friction=friction, seed=seed, velocities=velocities, remove_net_force=remove_net_force,
        max_force=max_force, max_temperature=max_temperature, symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array, pbc=atoms.pbc, step=step, time_fs=time_fs,
    )
    return md.run(steps, trajectory=out, log=log, every=every, progress=progress)
