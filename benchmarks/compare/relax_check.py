"""How close to a GFN1-xTB stationary point does a relaxation with a bundled model get?

For each bundled model, test frames (the first frame of distinct test trajectories: MD snapshots at
300-1000 K, never seen in training) are relaxed with the model (``fastfeat.runtime.relax``: FIRE,
forces only, ``--fmax`` eV/Å). At the start and at the model's relaxed structure the reference
forces are GFN1-xTB (tblite) single points, the labelling of the bundled data; reported are their
largest per-atom norm and RMS component, and the model's own. With ``--reference-steps K > 0`` the
relaxation is then continued with GFN1-xTB itself (ASE's FIRE, the same algorithm, at most K steps):
how far the atoms still move (RMS and largest displacement, Å) says how near the model's end point
is to the reference's. The atoms whose invariant features leave the model's training range
(``ForceModel.extrapolation``) are counted at the start and at the model's end point.

Needs the ``[data]`` extra (tblite). A single point takes 3 / 7 / 18 s on one core for the peo /
li4p2o7 / li4p2o7-water test frames. Writes ``benchmarks/results/relax_check.json`` and ``.md``.

    python -m benchmarks.compare.relax_check [--models peo li4p2o7 li4p2o7-water] [--frames 2]
        [--fmax 0.05] [--reference-steps 0] [--reference-models peo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks.compare._harness import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def _stats(f):
    f = np.asarray(f, dtype=np.float64)
    return {"fmax": float(np.linalg.norm(f, axis=1).max()), "rms": float(np.sqrt((f ** 2).mean()))}


def _test_frames(name, n_frames):
    from fastfeat.train import datasets

    frames, seen = [], set()
    for k, atoms in enumerate(datasets.load(name, split="test")):
        traj = int(atoms.info.get("trajectory", k))
        if traj not in seen:
            seen.add(traj)
            frames.append((k, atoms))
        if len(frames) == n_frames:
            break
    return frames


def run(models, n_frames, fmax, steps, reference_steps, reference_models):
    from ase.optimize import FIRE

    from fastfeat.runtime import ForceModel, relax
    from fastfeat.train.datasets.generate import _calculator
    from fastfeat.train.datasets.relabel import label_frame

    rows = []
    for name in models:
        model = ForceModel.pretrained(name)
        for index, atoms in _test_frames(name, n_frames):
            t0 = time.perf_counter()
            res = relax(model, atoms, fmax=fmax, steps=steps)
            t_relax = time.perf_counter() - t0
            ref_end = label_frame(res.atoms).get_forces()
            row = {
                "model": name, "test_frame": index, "trajectory": int(atoms.info.get("trajectory", -1)),
                "n_atoms": len(atoms), "converged": bool(res.converged), "steps": res.steps,
                "relax_s": round(t_relax, 3),
                "reference_start": _stats(atoms.get_forces()),
                "model_start": _stats(model.forces(atoms)),
                "reference_end": _stats(ref_end),
                "model_end": _stats(res.forces),
                "moved_rms_A": float(np.sqrt(((res.atoms.positions - atoms.positions) ** 2).sum(1).mean())),
                # atoms with invariant features outside the model's training range (ForceModel.extrapolation)
                "extrapolating_start": int(len(model.extrapolation(atoms).atoms)),
                "extrapolating_end": int(len(model.extrapolation(res.atoms).atoms)),
            }
            if reference_steps and name in reference_models:
                work = res.atoms.copy()
                work.calc = _calculator()
                opt = FIRE(work, logfile=None)
                t0 = time.perf_counter()
                done = opt.run(fmax=fmax, steps=reference_steps)
                d = work.positions - res.atoms.positions
                row["reference_relax"] = {
                    "converged": bool(done), "steps": int(opt.nsteps), "wall_s": round(time.perf_counter() - t0, 1),
                    "moved_rms_A": float(np.sqrt((d ** 2).sum(1).mean())),
                    "moved_max_A": float(np.linalg.norm(d, axis=1).max()),
                    "reference_fmax": _stats(work.get_forces())["fmax"],
                    "model_fmax_there": _stats(model.forces(work))["fmax"],
                }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def markdown(res):
    lines = [
        "# Relaxing with a bundled model: how close to a GFN1-xTB stationary point?",
        "",
        f"Command: `{res['command']}`. {res['machine']}, {res['date']}.",
        "",
        f"FIRE (forces only, `fastfeat.runtime.relax`) to a largest per-atom force norm below {res['fmax']} eV/Å, "
        f"at most {res['steps']} steps, from the first frame of distinct test trajectories (MD snapshots at "
        "300-1000 K). Reference forces: GFN1-xTB single points (tblite), as the bundled data. fmax: largest "
        "per-atom force norm; RMS: RMS force component (eV/Å).",
        "",
        "| model | test frame | atoms | steps | reference fmax / RMS at start | reference fmax / RMS at the model's "
        "relaxed structure | model fmax there | moved (RMS, Å) | atoms outside the training range: start → end |",
        "|---|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['test_frame']} | {r['n_atoms']} | {r['steps']}"
            f"{'' if r['converged'] else ' (not converged)'} | {r['reference_start']['fmax']:.2f} / "
            f"{r['reference_start']['rms']:.2f} | {r['reference_end']['fmax']:.2f} / {r['reference_end']['rms']:.3f} "
            f"| {r['model_end']['fmax']:.3f} | {r['moved_rms_A']:.2f} | {r['extrapolating_start']} → "
            f"{r['extrapolating_end']} |")
    ref = [r for r in res["rows"] if "reference_relax" in r]
    if ref:
        lines += [
            "",
            "Continued with GFN1-xTB itself (ASE's FIRE, same fmax) from the model's relaxed structure:",
            "",
            "| model | test frame | xTB steps | converged | atoms moved further (RMS / largest, Å) | "
            "reference fmax at the end | model fmax there |",
            "|---|---:|---:|:---:|---|---:|---:|",
        ]
        for r in ref:
            q = r["reference_relax"]
            lines.append(
                f"| {r['model']} | {r['test_frame']} | {q['steps']} | {'yes' if q['converged'] else 'no'} | "
                f"{q['moved_rms_A']:.3f} / {q['moved_max_A']:.3f} | {q['reference_fmax']:.3f} | "
                f"{q['model_fmax_there']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["peo", "li4p2o7", "li4p2o7-water"])
    p.add_argument("--frames", type=int, default=2, help="test trajectories per model (first frame of each)")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=1000, help="largest number of FIRE steps with the model")
    p.add_argument("--reference-steps", type=int, default=0,
                   help="continue with GFN1-xTB FIRE for at most this many steps (0: no)")
    p.add_argument("--reference-models", nargs="+", default=["peo"],
                   help="models whose relaxations are continued with GFN1-xTB")
    p.add_argument("--out", default=os.path.join(RESULTS, "relax_check.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = run(args.models, args.frames, args.fmax, args.steps, args.reference_steps, args.reference_models)
    res = {
        "command": "python -m benchmarks.compare.relax_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "fmax": args.fmax, "steps": args.steps, "rows": rows,
    }
    write_report(res, args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
