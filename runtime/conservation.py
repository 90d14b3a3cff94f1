"""How far direct forces are from conservative: Jacobian asymmetry and NVE drift.

Direct forces are not the gradient of an energy, so their Jacobian
``J = -dF/dx`` need not be symmetric and NVE dynamics need not conserve
energy (Bigi, Langer & Ceriotti, "The dark side of the forces", ICML 2025).
Two measures:

- Jacobian asymmetry ``λ = ‖J_anti‖_F / ‖J‖_F`` with ``J_anti = (J - Jᵀ)/2``,
  J by central finite differences (0 for conservative forces, up to
  finite-difference and float32 noise);
- NVE drift: the slope of the temperature (K/ps) in a short velocity-Verlet
  run started at a given temperature (spurious heating or cooling), with the
  drift of kinetic energy minus work (eV/atom/ps) as a check that the time
  step integrates accurately (that one is ~0 for any force field).

``fastfeat check-conservation MODEL STRUCTURE [--json]``
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from fastfeat._io import json_text
from fastfeat._validation import check_int, check_number, check_positive, check_timestep

__all__ = ["jacobian", "jacobian_asymmetry", "nve_drift", "check_conservation", "main"]


def _force_fn(model, atoms, device="cpu"):
    if callable(model):
        return model
    from .model import resolve_model

    model = resolve_model(model, device=device)
    ev = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
    if ev.xp is np:
        return ev
    return lambda x: ev(ev.xp.asarray(x)).get()


def _check_h(h):
    """``h`` (finite-difference step, Å) as a float if it is a finite number > 0, else TypeError/ValueError."""
    return check_positive(h, "`h`")


#: fewest NVE steps nve_drift accepts: the drift is a fit over >= 3 recorded temperatures
MIN_NVE_STEPS = 2


def _default_h(model):
    """0.002 Å for float64 models, 0.01 Å otherwise (float32 noise ~1e-7 |F| / h)."""
    dtype = getattr(model, "dtype", None)
    if dtype is None:  # a ForceEvaluator carries its model
        dtype = getattr(getattr(model, "model", None), "dtype", np.float32)
    return 0.002 if dtype == np.float64 else 0.01


def jacobian(force_fn, positions, indices, h):
    """Block of ``J = -dF/dx`` for the atoms ``indices`` by central differences.

    Parameters
    ----------
    force_fn : callable
        (N, 3) float64 Å -> (N, 3) eV/Å.
    positions : (N, 3) float array, Å
    indices : (M,) int array
        Atoms whose rows and columns are computed.
    h : float
        Displacement, Å.

    Returns
    -------
    (3M, 3M) float64 ndarray, eV/Å²
        ``J[(i, a), (j, b)] = -(F_ia(x + h e_jb) - F_ia(x - h e_jb)) / 2h``.
    """
    h = _check_h(h)
    x = np.array(positions, dtype=np.float64)
    idx = np.asarray(indices, dtype=np.int64)
    m = len(idx)
    jac = np.empty((3 * m, 3 * m))
    for col, (j, b) in enumerate((j, b) for j in idx for b in range(3)):
        x[j, b] += h
        f_plus = np.array(force_fn(x)[idx], dtype=np.float64)
        x[j, b] -= 2 * h
        f_minus = np.array(force_fn(x)[idx], dtype=np.float64)
        x[j, b] += h
        jac[:, col] = -(f_plus - f_minus).ravel() / (2 * h)
    return jac


#: atoms in the Jacobian block: the whole structure up to this size (every bundled frame), else a compact block
DEFAULT_MAX_ATOMS = 128
#: Langevin steps before the NVE run, so that the drift is not a new start settling in
DEFAULT_EQUILIBRATE_STEPS = 1000


def _compact_block(atoms, size, seed):
    """Indices of the `size` atoms nearest (minimum image on periodic axes) to a seeded random centre:
    the asymmetry of direct forces sits in the couplings between neighbours, which a block of scattered
    atoms misses (a random 24-atom block read λ 1.5x low on the bundled peo frame)."""
    n = len(atoms)
    centre = int(np.random.default_rng(seed).integers(n))
    d = atoms.get_distances(centre, np.arange(n), mic=bool(np.any(atoms.pbc)))
    return np.sort(np.argsort(d, kind="stable")[:size])


def jacobian_asymmetry(model, atoms, *, h=None, max_atoms=DEFAULT_MAX_ATOMS, seed=0, device="cpu") -> dict:
    """λ = ‖J_anti‖/‖J‖ of a model at a structure.

    Parameters
    ----------
    model : ForceModel, path, bundled name, or callable force function
    atoms : ase.Atoms
    h : float, optional
        Finite-difference step in Å, finite and > 0 (default 0.01 for float32
        models and callables, 0.002 for float64 models).
    max_atoms : int
        The whole Jacobian for structures of up to this many atoms (>= 1),
        else the square block of the ``max_atoms`` atoms nearest to a random
        (seeded) centre atom; cost 6 * min(N, max_atoms) force calls.

    Returns
    -------
    dict
        ``lambda``, ``norm_J`` and ``norm_J_anti`` (eV/Å²), ``h``, ``atoms_used``.
    """
    h = _default_h(model) if h is None else _check_h(h)
    max_atoms = check_int(max_atoms, "`max_atoms`", 1)
    fn = _force_fn(model, atoms, device)
    n = len(atoms)
    if n <= max_atoms:
        idx = np.arange(n)
    else:
        idx = _compact_block(atoms, max_atoms, seed)
    jac = jacobian(fn, atoms.positions, idx, h)
    anti = 0.5 * (jac - jac.T)
    norm, norm_anti = float(np.linalg.norm(jac)), float(np.linalg.norm(anti))
    return {
        "lambda": norm_anti / norm if norm > 0 else float("nan"),
        "norm_J": norm,
        "norm_J_anti": norm_anti,
        "h": float(h),
        "atoms_used": int(len(idx)),
    }


def nve_drift(model, atoms, *, steps=2000, dt=0.5, temperature=300.0, seed=0, device="cpu", fit_ps=0.25,
              equilibrate_steps=DEFAULT_EQUILIBRATE_STEPS, friction=0.05) -> dict:
    """Temperature and energy drift of a short NVE (velocity Verlet) run.

    The NVE run starts from ``equilibrate_steps`` of Langevin MD (``friction``
    1/fs, same ``dt`` and ``temperature``; 0: straight from ``atoms`` with
    fresh Maxwell-Boltzmann velocities). Without it a stored frame settling
    in with new velocities heats or cools by itself, which read as drift:
    a conservative Lennard-Jones cluster showed +10 K/ps, the bundled peo
    model 2x and li4p2o7 7x their drift after equilibration.

    ``steps`` must be >= 2 (the drifts are fits over >= 3 recorded points).
    The NVE run starts without centre-of-mass motion (its temperature counts
    3N - 3 degrees of freedom; the Langevin velocities are shifted to zero
    total momentum). It stops on unphysical forces (``max_force``) but not on
    a high temperature: runaway heating is what it measures.

    Returns
    -------
    dict
        ``drift_K_per_ps`` (slope of T(t) over the first ``fit_ps`` ps, before a
        runaway dominates), ``doubling_time_ps`` (first time T reaches twice its
        start, None if never), ``integration_drift_eV_per_atom_per_ps``
        (slope of kinetic energy minus work: time-step error), start/end temperatures, and
        ``stopped_at``/``stop_reason`` if a run became unstable: the NVE run, or
        already the Langevin run before it (``stop_reason`` then says so, and the
        temperatures and drifts are NaN). NaN also marks what too few recorded
        points leave undefined.
    """
    from .md import MDInstabilityError, MolecularDynamics

    steps = check_int(steps, "`steps`", MIN_NVE_STEPS, " (the drift is a fit over >= 3 recorded points)")
    equilibrate_steps = check_int(equilibrate_steps, "`equilibrate_steps`", 0)
    fn = _force_fn(model, atoms, device)
    nan = float("nan")
    out = {
        "steps": 0,
        "dt_fs": float(dt),
        "equilibrate_steps": int(equilibrate_steps),
        "temperature_start_K": nan,
        "temperature_end_K": nan,
        "drift_K_per_ps": nan,
        "fit_ps": float(fit_ps),
        "doubling_time_ps": None,
        "integration_drift_eV_per_atom_per_ps": nan,
        "stopped_at": None,
        "stop_reason": None,
    }
    masses = atoms.get_masses()
    positions, velocities = atoms.positions, None
    if equilibrate_steps:
        eq = MolecularDynamics(fn, atoms.positions, masses, dt=dt, temperature=temperature,
                               ensemble="langevin", friction=friction, seed=seed)
        try:
            eq.run(equilibrate_steps, every=equilibrate_steps)
        except MDInstabilityError as exc:  # the model fails even thermostatted: a finding, reported
            out["stopped_at"] = exc.step
            out["stop_reason"] = (f"in the Langevin warm-up before the NVE run (step {exc.step} of "
                                  f"{equilibrate_steps}): {exc.reason}")
            return out
        positions, velocities = np.array(eq.x, dtype=np.float64), np.array(eq.v, dtype=np.float64)
        if len(masses) > 1:
            velocities -= (masses @ velocities) / masses.sum()
    md = MolecularDynamics(fn, positions, masses, dt=dt, temperature=temperature,
                           ensemble="nve", seed=seed, max_temperature=math.inf, velocities=velocities)
    every = max(1, steps // 200)
    try:
        result = md.run(steps, every=every)
    except MDInstabilityError as exc:
        result = exc.result
        out["stopped_at"], out["stop_reason"] = exc.step, exc.reason
    log = result.log
    out["steps"] = int(result.steps_done)
    temps = log["temperature_K"]
    if not len(temps):  # the forces at the start were already bad: nothing recorded
        return out
    t_ps = log["time_fs"] * 1e-3
    n = len(atoms)
    out["temperature_start_K"] = float(temps[0])
    out["temperature_end_K"] = float(temps[-1])
    out["fit_ps"] = float(min(fit_ps, t_ps[-1]))
    hot = np.flatnonzero(temps >= 2.0 * temps[0]) if temps[0] > 0 else []
    if len(hot):
        out["doubling_time_ps"] = float(t_ps[hot[0]])
    window = t_ps <= fit_ps
    if window.sum() >= 3:
        out["drift_K_per_ps"] = float(np.polyfit(t_ps[window], temps[window], 1)[0])
    if len(t_ps) >= 3:
        out["integration_drift_eV_per_atom_per_ps"] = float(np.polyfit(t_ps, log["ke_minus_work_eV"], 1)[0] / n)
    return out


def resolvable_drift(nve, n_atoms) -> float:
    """The smallest NVE temperature drift (K/ps) the fit can tell from thermal noise: 5 K/ps, or the drift that
    moves T by twice its equilibrium fluctuation T sqrt(2 / (3N - 3)) within the fit window, if larger. A
    32-atom conservative EMT copper read -115 to +51 K/ps over 0.25 ps by noise alone."""
    t = nve["temperature_start_K"]
    fit = nve["fit_ps"]
    if not (t > 0 and fit > 0):
        return 5.0
    sigma = t * math.sqrt(2.0 / max(3 * n_atoms - 3, 1))
    return max(5.0, 2.0 * sigma / fit)


def _advice(lam, nve, n_atoms):
    if nve is not None and nve["stopped_at"] is not None:
        return ("NVE became unstable: run thermostatted MD only (`--ensemble langevin`), and check the "
                "structure is inside the model's training distribution")
    if math.isnan(lam):
        return ("λ is undefined: no displacement changed any force (‖J‖ = 0; atoms beyond the cutoff of each "
                "other?), so the Jacobian says nothing about conservation here; check a structure where the "
                "atoms interact")
    if nve is None:  # NVE skipped: λ alone
        if lam < 0.01:
            return ("the Jacobian is close to symmetric here (NVE drift not measured: --nve-steps 0); "
                    "thermostatted MD (Langevin) remains the safe default for direct forces")
        return ("forces are measurably non-conservative (λ): use thermostatted MD (`--ensemble langevin`, friction "
                "≳ 0.05 1/fs); do not use NVE energies or fluctuations")
    drift = abs(nve["drift_K_per_ps"]) if not math.isnan(nve["drift_K_per_ps"]) else math.inf
    noise = resolvable_drift(nve, n_atoms)
    if lam < 0.01 and drift < noise:
        return (f"forces are close to conservative here (λ < 0.01; the NVE drift is within what {n_atoms} atoms over "
                f"{nve['fit_ps']:g} ps resolve, {noise:.3g} K/ps): NVE is usable for short runs, but thermostatted "
                "MD (Langevin) remains the safe default for direct forces")
    return ("forces are measurably non-conservative: use thermostatted MD (`--ensemble langevin`, friction "
            "≳ 0.05 1/fs) so the thermostat removes the spurious heating; do not use NVE energies or fluctuations")


_OPTIONS = ("h", "max_atoms", "nve_steps", "equilibrate_steps", "dt", "temperature", "seed")


def _check_options(h, max_atoms, nve_steps, equilibrate_steps, dt=0.5, temperature=300.0, seed=0, names=_OPTIONS):
    """Validated (h or None, max_atoms, nve_steps, equilibrate_steps) of :func:`check_conservation`, which also
    checks ``dt``, ``temperature`` and ``seed`` (before the Jacobian's force calls, not after them); ``names``
    for messages (the command line's option names)."""
    try:
        check_timestep(dt, "`dt`")
        check_number(temperature, "`temperature`", minimum=0.0)
        check_int(seed, "`seed`", 0)
        h = None if h is None else _check_h(h)
        max_atoms = check_int(max_atoms, "`max_atoms`", 1)
        nve_steps = check_int(nve_steps, "`nve_steps`", 0, " (0 skips the NVE run)")
        if 0 < nve_steps < MIN_NVE_STEPS:
            raise ValueError(f"`nve_steps` must be 0 (skip the NVE run) or an int >= {MIN_NVE_STEPS} (the drift is "
                             f"a fit over >= 3 recorded points), got {nve_steps}")
        equilibrate_steps = check_int(equilibrate_steps, "`equilibrate_steps`", 0)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        for api, cli in zip(_OPTIONS, names):
            msg = msg.replace(f"`{api}`", f"`{cli}`")
        raise type(exc)(msg) from None
    return h, max_atoms, nve_steps, equilibrate_steps


def check_conservation(model, atoms, *, h=None, max_atoms=DEFAULT_MAX_ATOMS, nve_steps=2000, dt=0.5,
                       temperature=300.0, seed=0, device="cpu", equilibrate_steps=DEFAULT_EQUILIBRATE_STEPS) -> dict:
    """Jacobian asymmetry, NVE drift, net force and advice, as a JSON-ready dict.

    Parameters
    ----------
    h : float, optional
        Finite-difference step (Å, finite, > 0); see :func:`jacobian_asymmetry`.
    max_atoms : int
        Atoms in the Jacobian block (>= 1; see :func:`jacobian_asymmetry`).
    nve_steps : int
        Steps of the NVE run (>= 2), or 0 to skip it: then ``report["nve"]``
        is None and the advice rests on λ alone.
    dt, temperature, seed, equilibrate_steps
        Of the NVE run and the Langevin run before it (see :func:`nve_drift`).

    Raises
    ------
    ValueError
        A bad argument (checked before any force call), or a model that does
        not predict forces.
    """
    from .model import resolve_model

    h, max_atoms, nve_steps, equilibrate_steps = _check_options(h, max_atoms, nve_steps, equilibrate_steps, dt,
                                                                temperature, seed)
    if not callable(model):
        model = resolve_model(model, device=device)
    fn = _force_fn(model, atoms, device)
    f = np.asarray(fn(atoms.positions), dtype=np.float64).copy()
    lam = jacobian_asymmetry(fn, atoms, h=_default_h(model) if h is None else h, max_atoms=max_atoms, seed=seed)
    nve = None
    if nve_steps:
        nve = nve_drift(fn, atoms, steps=nve_steps, dt=dt, temperature=temperature, seed=seed,
                        equilibrate_steps=equilibrate_steps)
    return {
        "model": getattr(model, "path", repr(model)),
        "n_atoms": len(atoms),
        "formula": atoms.get_chemical_formula(),
        "jacobian": lam,
        "nve": nve,
        "net_force_eV_per_A": float(np.linalg.norm(f.sum(axis=0))),
        "rms_force_eV_per_A": float(np.sqrt((f ** 2).sum(axis=1).mean())) if len(f) else 0.0,
        "advice": _advice(lam["lambda"], nve, len(atoms)),
    }


def _fmt(value, spec):
    """``value`` formatted, or "n/a" for NaN (too few recorded points, e.g. a run that stopped at once)."""
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="fastfeat check-conservation",
        description="Jacobian asymmetry λ = ‖J_anti‖/‖J‖ (finite differences) and NVE drift of a direct-force model.",
    )
    p.add_argument("model", help="model file (.onnx) or bundled model name")
    p.add_argument("structure", help="structure file read by ase.io, or a bundled data set NAME[:SPLIT] "
                                     "(SPLIT: train, val, test (default) or all)")
    p.add_argument("--frame", type=int, default=0, help="frame of STRUCTURE to measure from (default 0)")
    p.add_argument("--h", type=float, default=None, help="finite-difference step in Å, > 0 (default 0.01; 0.002 for float64 models)")
    p.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS,
                   help=f"the whole Jacobian up to this many atoms, else a block of this many neighbouring atoms, "
                        f">= 1 (default {DEFAULT_MAX_ATOMS}; cost 6x that many force calls)")
    p.add_argument("--equilibrate-steps", type=int, default=DEFAULT_EQUILIBRATE_STEPS,
                   help=f"Langevin steps (friction 0.05 1/fs) before the NVE run, >= 0 (default "
                        f"{DEFAULT_EQUILIBRATE_STEPS}): a fresh start settling in would read as drift")
    p.add_argument("--nve-steps", type=int, default=2000, help="NVE steps for the drift, >= 2 (default 2000); 0 skips the NVE run")
    p.add_argument("--dt", type=float, default=0.5, help="NVE time step in fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature in K (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from ._structures import load_structure
    from .model import resolve_model

    try:
        # bad options fail before the structure or the model is loaded
        _check_options(args.h, args.max_atoms, args.nve_steps, args.equilibrate_steps, args.dt, args.temperature,
                       args.seed, names=("--h", "--max-atoms", "--nve-steps", "--equilibrate-steps", "--dt",
                                         "--temperature", "--seed"))
        atoms = load_structure(args.structure, args.frame)
        model = resolve_model(args.model, device=args.device)
        model.require_forces()
        report = check_conservation(model, atoms, h=args.h, max_atoms=args.max_atoms, nve_steps=args.nve_steps,
                                    dt=args.dt, temperature=args.temperature, seed=args.seed, device=args.device,
                                    equilibrate_steps=args.equilibrate_steps)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        print(f"fastfeat check-conservation: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json_text(report, indent=2))
        return 0
    jac, nve = report["jacobian"], report["nve"]
    print(f"model {report['model']} on {report['formula']} ({report['n_atoms']} atoms)")
    print(f"  Jacobian asymmetry λ = ‖J_anti‖/‖J‖ = {_fmt(jac['lambda'], '.4g')}  "
          f"({jac['atoms_used']} atoms, h = {jac['h']:g} Å; 0 for conservative forces)")
    if nve is None:
        print("  NVE drift: skipped (--nve-steps 0)")
    else:
        print(f"  NVE {nve['steps']} steps x {nve['dt_fs']} fs after {nve['equilibrate_steps']} Langevin steps: "
              f"T {_fmt(nve['temperature_start_K'], '.1f')} -> "
              f"{_fmt(nve['temperature_end_K'], '.1f')} K, drift {_fmt(nve['drift_K_per_ps'], '+.3g')} K/ps over the first "
              f"{nve['fit_ps']:g} ps, "
              + (f"T doubled after {nve['doubling_time_ps']:g} ps " if nve["doubling_time_ps"] is not None
                 else "T never doubled ")
              + f"(integration check: KE - work drifts {_fmt(nve['integration_drift_eV_per_atom_per_ps'], '+.2g')} "
                "eV/atom/ps)"
              + (f"; STOPPED at step {nve['stopped_at']}: {nve['stop_reason']}" if nve["stopped_at"] is not None
                 else ""))
    print(f"  net force |ΣF| = {report['net_force_eV_per_A']:.3g} eV/Å (rms atomic force {report['rms_force_eV_per_A']:.3g})")
    print(f"  advice: {report['advice']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
