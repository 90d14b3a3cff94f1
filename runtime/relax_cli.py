"""``fastfeat relax MODEL STRUCTURE --fmax F --steps N --out relaxed.extxyz``"""

from __future__ import annotations

import argparse
import sys

from .relaxation import FIRE_DEFAULTS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastfeat relax",
        description="Relax a structure (fixed cell) with a fastfeat direct-force model: FIRE, as ASE's, with forces "
                    "only. Exit status 0 when converged, 1 when --steps ran out first, 2 on bad input, 3 when "
                    "the forces became unusable.",
    )
    p.add_argument("model", help="model file (.onnx) or bundled model name (peo, li4p2o7, li4p2o7-water)")
    p.add_argument("structure", help="structure file read by ase.io, or a bundled data set NAME[:SPLIT] "
                                     "(SPLIT: train, val, test (default) or all)")
    p.add_argument("--frame", type=int, default=0, help="frame of STRUCTURE to start from (default 0)")
    p.add_argument("--fmax", type=float, default=0.05,
                   help="converged when every atom's force norm is below this (eV/Å, default 0.05)")
    p.add_argument("--steps", type=int, default=1000, help="largest number of FIRE steps (default 1000)")
    p.add_argument("--maxstep", type=float, default=FIRE_DEFAULTS["maxstep"],
                   help=f"largest move per step in Å (default {FIRE_DEFAULTS['maxstep']:g}, as ASE)")
    p.add_argument("--out", default=None,
                   help="relaxed structure, extended XYZ (name ending in .extxyz or .xyz), with its forces")
    p.add_argument("--trajectory", default=None, help="relaxation path, extended XYZ, a frame every --every steps")
    p.add_argument("--every", type=int, default=1, help="trajectory/log interval in steps (default 1)")
    p.add_argument("--log", default=None, help="text log file (step, fmax, FIRE time step)")
    p.add_argument("--max-force", type=float, default=1000.0,
                   help="stop when a force component exceeds this (eV/Å, default 1000) or is NaN")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1; 0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from fastfeat._validation import check_int, check_positive

    from ._structures import load_structure, periodicity
    from .extrapolation import report as report_extrapolation
    from .md import check_distinct_outputs, check_outputs
    from .model import ModelLoadError, resolve_model
    from ._interrupt import Interrupted
    from .relaxation import RelaxInstabilityError, relax

    try:
        # arguments and outputs first, named as options: a bad one fails before anything is loaded or run
        check_positive(args.fmax, "--fmax")
        check_int(args.steps, "--steps", 0)
        check_int(args.every, "--every", 1)
        check_positive(args.maxstep, "--maxstep")
        check_positive(args.max_force, "--max-force", allow_inf=True)
        check_int(args.threads, "--threads", 0, " (0: all cores)")
        check_outputs(args.out, None, "--out")  # creates nothing: --out may be STRUCTURE
        check_outputs(args.trajectory, args.log, "--trajectory", "--log")
        check_distinct_outputs((args.out, "--out"), (args.trajectory, "--trajectory"), (args.log, "--log"))
        atoms = load_structure(args.structure, args.frame)
        model = resolve_model(args.model, device=args.device, intra_op_threads=args.threads)
        model.require_forces()
        if not args.quiet:
            print(f"fastfeat relax: {model!r}", file=sys.stderr)
            print(f"  {len(atoms)} atoms ({atoms.get_chemical_formula()}, {periodicity(atoms)}), FIRE to fmax "
                  f"{args.fmax} eV/Å, "
                  f"at most {args.steps} steps", file=sys.stderr)
        report_extrapolation(model, atoms, "start", "fastfeat relax", args.quiet)
        result = relax(model, atoms, fmax=args.fmax, steps=args.steps, maxstep=args.maxstep,
                       max_force=args.max_force, trajectory=args.trajectory, every=args.every, log=args.log,
                       progress=not args.quiet)
    except Interrupted as exc:  # Ctrl-C: stopped at the end of a step, which is in the trajectory
        print(f"fastfeat relax: {exc}", file=sys.stderr)
        if args.out:
            import ase.io

            ase.io.write(args.out, exc.result.atoms, format="extxyz")
            print(f"fastfeat relax: the structure of step {exc.step} (not converged) is in {args.out}", file=sys.stderr)
        return 130
    except RelaxInstabilityError as exc:
        print(f"fastfeat relax: {exc}", file=sys.stderr)
        if exc.step:
            report_extrapolation(model, exc.result.atoms, "last good step", "fastfeat relax", False)
        return 3
    except (OSError, ValueError, TypeError, RuntimeError, ModelLoadError) as exc:
        print(f"fastfeat relax: error: {exc}", file=sys.stderr)
        return 2
    report_extrapolation(model, result.atoms, "end", "fastfeat relax", args.quiet)
    if args.out:
        import ase.io

        ase.io.write(args.out, result.atoms, format="extxyz")
    state = "converged" if result.converged else f"NOT converged (fmax target {args.fmax:g} eV/Å)"
    print(f"{state}: {result.steps} steps in {result.wall_s:.2f} s, largest force {result.fmax:.4g} eV/Å"
          + (f"; structure {args.out}" if args.out else ""))
    start = float(result.log["fmax"][0])
    if not result.converged and result.fmax > start:
        print(f"fastfeat relax: the largest force grew from {start:.4g} to {result.fmax:.4g} eV/Å: FIRE found no "
              "point where this model's forces vanish near the structure, which happens when they have a large "
              "non-conservative part (see `fastfeat check-conservation`) or the structure left the training data",
              file=sys.stderr)
    return 0 if result.converged else 1
