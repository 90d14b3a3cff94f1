"""``fastfeat md MODEL STRUCTURE --steps N --dt FS --temperature K ...``"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastfeat md",
        description="Molecular dynamics with a fastfeat direct-force model (Langevin BAOAB or NVE velocity Verlet).",
    )
    p.add_argument("model", help="model file (.onnx) or bundled model name (peo, li4p2o7, li4p2o7-water)")
    p.add_argument("structure", help="structure file read by ase.io, or a bundled data set NAME[:SPLIT] "
                                     "(SPLIT: train, val, test (default) or all)")
    p.add_argument("--frame", type=int, default=0, help="frame of STRUCTURE to start from (default 0)")
    p.add_argument("--steps", type=int, required=True, help="number of MD steps")
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="temperature in K (default 300)")
    p.add_argument("--ensemble", choices=("langevin", "nve"), default="langevin")
    p.add_argument("--friction", type=float, default=None, help="Langevin friction in 1/fs (default 0.05: direct forces heat, the thermostat must remove it; not used in NVE)")
    p.add_argument("--seed", type=int, default=0, help="seed of initial velocities and noise (>= 0, default 0; continued from a frame of step s with --keep-velocities, the noise is seeded from (seed, s): independent of the original run's)")
    p.add_argument("--out", default=None, help="trajectory file, extended XYZ: its name must end in .extxyz or .xyz")
    p.add_argument("--every", type=int, default=100, help="write trajectory/log every k steps (default 100)")
    p.add_argument("--log", default=None, help="text log file")
    p.add_argument("--keep-velocities", action="store_true",
                   help="start from the velocities (momenta) stored in STRUCTURE instead of Maxwell-Boltzmann; a "
                        "frame written by fastfeat md also continues its step and time (a restart)")
    p.add_argument("--remove-net-force", action="store_true", help="make the total force zero every step")
    p.add_argument("--max-force", type=float, default=1000.0,
                   help="stop when a force component exceeds this (eV/Å, default 1000) or is NaN")
    p.add_argument("--max-temperature", type=float, default=None,
                   help="stop when the instantaneous temperature exceeds this (K; default max(5000, 10 x "
                        "--temperature); inf: no limit): the time step is too large or the run is heating away")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1; 0: all cores)")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin in Å (default 1.0)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _restart_clock(atoms):
    """(step, time_fs) a frame written by fastfeat md carries in its info, else (0, 0.0)."""
    import math
    import numbers

    step, time_fs = atoms.info.get("step"), atoms.info.get("time_fs")
    if (isinstance(step, numbers.Integral) and not isinstance(step, bool) and step >= 0
            and isinstance(time_fs, numbers.Real) and not isinstance(time_fs, bool) and math.isfinite(time_fs)):
        return int(step), float(time_fs)
    return 0, 0.0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from fastfeat._validation import check_friction, check_int, check_number, check_positive, check_timestep

    from ._structures import at_positions, load_structure, periodicity
    from .extrapolation import report as report_extrapolation
    from ._interrupt import Interrupted
    from .md import DEFAULT_FRICTION, MDInstabilityError, check_outputs, run_md
    from .model import ModelLoadError, resolve_model

    try:
        # options and outputs first, named as options (run_md checks them again under its argument names): a
        # bad one fails before the model is loaded or anything runs
        check_int(args.steps, "--steps", 0)
        check_int(args.every, "--every", 1)
        check_timestep(args.dt, "--dt")
        check_number(args.temperature, "--temperature", minimum=0.0)
        friction_given = args.friction is not None
        if not friction_given:
            args.friction = DEFAULT_FRICTION
        if args.ensemble == "langevin":
            check_friction(args.friction, "--friction")
        else:
            check_number(args.friction, "--friction", minimum=0.0)
            if friction_given and args.friction > 0 and not args.quiet:  # silently ignored before
                print(f"fastfeat md: note: --friction {args.friction:g} is not used with --ensemble nve (no thermostat)",
                      file=sys.stderr)
        check_int(args.seed, "--seed", 0)
        check_positive(args.max_force, "--max-force")
        if args.max_temperature is not None:
            check_positive(args.max_temperature, "--max-temperature", allow_inf=True)
        check_int(args.threads, "--threads", 0, " (0: all cores)")
        check_number(args.skin, "--skin", minimum=0.0)
        check_outputs(args.out, args.log, "trajectory --out", "--log")  # creates nothing: --out may be STRUCTURE
        atoms = load_structure(args.structure, args.frame)
        if args.keep_velocities and not atoms.has("momenta"):
            raise ValueError(f"--keep-velocities, but frame {args.frame} of {args.structure!r} stores no velocities "
                             "(momenta); drop it to draw Maxwell-Boltzmann velocities at --temperature")
        model = resolve_model(args.model, device=args.device, intra_op_threads=args.threads, skin=args.skin)
        model.require_forces()
        if not args.quiet:
            print(f"fastfeat md: {model!r}", file=sys.stderr)
            print(f"  {len(atoms)} atoms ({atoms.get_chemical_formula()}, {periodicity(atoms)}), {args.steps} steps of "
                  f"{args.dt} fs, {args.ensemble} at {args.temperature} K", file=sys.stderr)
        report_extrapolation(model, atoms, "start", "fastfeat md", args.quiet)
        step, time_fs = _restart_clock(atoms) if args.keep_velocities else (0, 0.0)
        if step and not args.quiet:
            print(f"  continuing from step {step} (t = {time_fs:g} fs) of the frame", file=sys.stderr)
        result = run_md(
            model, atoms, args.steps, dt=args.dt, temperature=args.temperature, ensemble=args.ensemble,
            friction=args.friction, seed=args.seed, out=args.out, every=args.every, log=args.log,
            remove_net_force=args.remove_net_force, max_force=args.max_force,
            max_temperature=args.max_temperature, progress=not args.quiet,
            velocities="atoms" if args.keep_velocities else None, step=step, time_fs=time_fs,
        )
    except Interrupted as exc:  # Ctrl-C: the run stopped at the end of a step and wrote it
        print(f"fastfeat md: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the run (loading) or a second Ctrl-C
        print("fastfeat md: interrupted", file=sys.stderr)
        return 130
    except MDInstabilityError as exc:
        print(f"fastfeat md: {exc}", file=sys.stderr)
        if exc.result.steps_run:
            report_extrapolation(model, at_positions(atoms, exc.result.positions), "last good step", "fastfeat md", False)
        return 3
    except (OSError, ValueError, TypeError, RuntimeError, ModelLoadError) as exc:
        print(f"fastfeat md: error: {exc}", file=sys.stderr)
        return 2
    report_extrapolation(model, at_positions(atoms, result.positions), "end", "fastfeat md", args.quiet)
    log = result.log
    outside = log.get("outside_training")
    if outside is not None and len(outside) and outside.max() > 0:
        k = int(outside.argmax())
        print(f"fastfeat md: up to {outside.max()} of {len(atoms)} atoms were outside the training feature ranges "
              f"in the recorded frames (step {log['step'][k]}; the log's outside_training column)", file=sys.stderr)
    print(
        f"done: {result.steps_run} steps in {result.wall_s:.2f} s: {result.steps_per_s:.1f} steps/s, "
        f"{result.atom_steps_per_s:.4g} atom-steps/s, {result.ns_per_day:.3f} ns/day; "
        f"mean T {log['temperature_K'].mean():.1f} K; neighbour-list builds {result.n_rebuilds}"
        + (f"; trajectory {args.out}" if args.out else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
