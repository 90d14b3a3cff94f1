"""``fastfeat demo``: bundled model -> accuracy on the test split -> MD -> speed -> report.

Writes ``report.md``, ``parity.png``, ``temperature.png``, ``md.extxyz``,
``md.log`` and ``summary.json`` to ``--out`` (default ``fastfeat-demo``).
Runs on CUDA when a usable GPU, CuPy and onnxruntime's CUDA provider are
present (``--device auto``, the default), else on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

import numpy as np

from fastfeat._io import json_text

__all__ = ["main", "force_metrics", "reference_forces"]


def reference_forces(atoms) -> np.ndarray:
    """Reference forces (eV/Å) stored with a frame (calculator results or ``arrays['forces']``)."""
    calc = atoms.calc
    if calc is not None and "forces" in getattr(calc, "results", {}):
        return np.asarray(calc.results["forces"], dtype=np.float64)
    if "forces" in atoms.arrays:
        return np.asarray(atoms.arrays["forces"], dtype=np.float64)
    raise ValueError("a frame of the accuracy data has no reference forces (no calculator results and no "
                     "'forces' array)")


def force_metrics(pred_nc, ref_nc, symbols=None) -> dict:
    """MAE, RMSE (eV/Å), relative RMSE = RMSE / RMS(reference), mean cosine similarity.

    Parameters
    ----------
    pred_nc, ref_nc : (N, 3) float arrays, eV/Å
    symbols : (N,) sequence of str, optional
        Adds per-element MAE.
    """
    pred, ref = np.asarray(pred_nc, np.float64), np.asarray(ref_nc, np.float64)
    diff = pred - ref
    rmse = float(np.sqrt((diff ** 2).mean()))
    rms_ref = float(np.sqrt((ref ** 2).mean()))
    norm_p, norm_r = np.linalg.norm(pred, axis=1), np.linalg.norm(ref, axis=1)
    ok = (norm_p > 1e-8) & (norm_r > 1e-8)
    cos = (pred[ok] * ref[ok]).sum(axis=1) / (norm_p[ok] * norm_r[ok])
    out = {
        "n_atoms": int(len(ref)),
        "mae": float(np.abs(diff).mean()),
        "rmse": rmse,
        "relative_rmse": rmse / rms_ref if rms_ref > 0 else float("nan"),
        "cosine": float(cos.mean()) if len(cos) else float("nan"),
    }
    if symbols is not None:
        symbols = np.asarray(symbols)
        out["mae_per_element"] = {str(s): float(np.abs(diff[symbols == s]).mean()) for s in np.unique(symbols)}
    return out


def _pick_device(requested):
    if requested != "auto":
        return requested, ""
    from .model import _check_cuda_runtime

    try:
        _check_cuda_runtime()
    except RuntimeError as exc:
        reason = str(exc).split(";")[0].replace("device='cuda' was requested but ", "")
        return "cpu", f"CUDA not used: {reason}"
    return "cuda", ""


def _load_frames(data, model_name):
    from fastfeat._io import names_path, read_structures

    from ._structures import bundled_dataset_names, bundled_frames, split_loader

    if data is None:
        if model_name is None:
            raise ValueError("`--data` is required when MODEL is a file (a data set name or an extxyz file)")
        data = model_name
    names = bundled_dataset_names()
    if names_path(data, names):
        return data, read_structures(data), "file"
    if data in names:
        if split_loader() is None:
            return f"{data} (all frames: fastfeat.train.datasets is unavailable)", bundled_frames(data, "test"), "all"
        return f"{data} (test split)", bundled_frames(data, "test"), "test"
    raise FileNotFoundError(f"`--data` {data!r} is neither a file nor a bundled data set (available: {names})")


PLOTS = ("parity.png", "temperature.png")


def _plots(outdir, ref, pred, symbols, md_log, dt_fs, target_t, scope="test"):
    """parity.png and temperature.png; returns the file names written (or a note). Plots of an earlier demo in
    ``outdir`` are removed first: a run without matplotlib must not leave another run's plots beside its report."""
    for name in PLOTS:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(outdir, name))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: no plots (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=120)
    lim = float(np.abs(ref).max()) * 1.05 if ref.size else 1.0
    for s in sorted(set(symbols)):
        mask = np.asarray(symbols) == s
        ax.scatter(ref[mask].ravel(), pred[mask].ravel(), s=3, alpha=0.4, label=s, rasterized=True)
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="reference force component (eV/Å)",
           ylabel="predicted (eV/Å)", title="force parity" + (", test split" if scope == "test" else ""))
    ax.legend(markerscale=4, frameon=False)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "parity.png"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.plot(md_log["time_fs"] * 1e-3, md_log["temperature_K"], lw=0.8)
    ax.axhline(target_t, color="k", ls="--", lw=0.8, label=f"target {target_t:g} K")
    ax.set(xlabel="time (ps)", ylabel="temperature (K)", title=f"Langevin MD, dt = {dt_fs:g} fs")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "temperature.png"))
    plt.close(fig)
    return ["parity.png", "temperature.png"], ""


#: what the report says when the accuracy is not measured on a test split
_NOT_TEST = ("Not a test split: these frames are unseen by the model only if they were held out of its "
             "training data.")


def _report(path, s):
    acc, md, info = s["accuracy"], s["md"], s["model"]
    lines = [
        "# fastfeat demo",
        "",
        f"Model `{info['name']}` ({info['head']} head, {info['dtype']}, species {', '.join(info['species'])}), "
        f"device **{s['device']}**{(' — ' + s['device_note']) if s['device_note'] else ''}.",
        f"Training data hash `{info['data_hash'][:16]}`; fastfeat {info['version']}.",
        "",
        "## Accuracy on the test split" if s["accuracy_scope"] == "test" else "## Accuracy on the given data",
        "",
        f"Data: {s['data']} — {acc['n_frames']} frames, {acc['n_atoms']} atoms."
        + ("" if s["accuracy_scope"] == "test" else f" {_NOT_TEST}"),
        "",
        "| metric | value |",
        "|---|---|",
        f"| force MAE | {acc['mae']:.4f} eV/Å |",
        f"| force RMSE | {acc['rmse']:.4f} eV/Å |",
        f"| relative RMSE (RMSE / RMS reference) | {acc['relative_rmse']:.4f} |",
        f"| mean cosine similarity | {acc['cosine']:.4f} |",
    ]
    for el, v in acc.get("mae_per_element", {}).items():
        lines.append(f"| MAE {el} | {v:.4f} eV/Å |")
    lines += [
        "",
        "## Molecular dynamics",
        "",
        f"{md['formula']} ({md['n_atoms']} atoms), Langevin BAOAB at {md['temperature_K']:g} K, "
        f"friction {md['friction_per_fs']:g} 1/fs, dt {md['dt_fs']:g} fs, {md['steps']} steps "
        f"({md['steps'] * md['dt_fs'] / 1000:g} ps).",
        "",
        "| | |",
        "|---|---|",
        f"| mean temperature (second half) | {md['mean_temperature_K']:.1f} K |",
        f"| speed | {md['steps_per_s']:.1f} steps/s, {md['atom_steps_per_s']:.4g} atom-steps/s |",
        f"| simulated time per day | {md['ns_per_day']:.3f} ns/day |",
        f"| machine | {md['machine']} |",
        f"| neighbour-list builds | {md['n_rebuilds']} |",
        f"| atoms outside the training feature ranges, last frame | "
        f"{'not known (the model file holds no ranges)' if md['extrapolating_end'] is None else md['extrapolating_end']} |",
        f"| stopped early | {md['stopped_at'] if md['stopped_at'] is not None else 'no'} |",
        "",
    ]
    if md["extrapolating_end"]:
        lines += [f"The last frame extrapolates: {md['extrapolation_end']}.", ""]
    if md["stopped_at"] is not None:
        lines += [
            f"**The MD run stopped at step {md['stopped_at']}**: {md['stop_reason']}. The trajectory ends with "
            "the last good frame. Direct forces are not conservative: a model that heats the system faster "
            "than the thermostat removes the heat runs away (see `fastfeat check-conservation`); a larger "
            "`--friction`, a smaller `--dt` or a better-trained model help.",
            "",
        ]
    lines += [
        "## Conservation check",
        "",
        f"Jacobian asymmetry λ = ‖J_anti‖/‖J‖ = {s['conservation']['lambda']:.4g} "
        f"({s['conservation']['atoms_used']} atoms, h = {s['conservation']['h']:g} Å; 0 for a conservative force "
        "field). Direct forces are not the gradient of an energy, so run thermostatted MD; "
        "`fastfeat check-conservation` also measures the NVE drift.",
        "",
    ]
    if s["plots"]:
        lines += ["## Plots", "", "![force parity](parity.png)", "", "![temperature](temperature.png)", ""]
    elif s["plot_note"]:
        lines += [f"_{s['plot_note']}_", ""]
    lines += [f"Total demo wall time {s['wall_s']:.1f} s.", ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def _machine(device):
    """The facts the MD speed depends on: the CPU (model, clock, vector instructions, Numba's target) and
    the thread counts, or the GPU's name on CUDA."""
    import numba

    from fastfeat._device import cpu_description

    text = f"{cpu_description()}, {os.cpu_count()} logical CPUs, {numba.get_num_threads()} Numba threads"
    if device == "cuda":
        try:
            from numba import cuda

            name = cuda.get_current_device().name
            text = f"{name.decode() if isinstance(name, bytes) else name} GPU; host {text}"
        except Exception:  # noqa: BLE001 - a fact for the report only
            pass
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastfeat demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="peo", help="bundled model name or .onnx file (default peo)")
    p.add_argument("--data", default=None,
                   help="test data: bundled data set name (its test split) or an extxyz file with forces "
                        "(default: the bundled data set of the model's name)")
    p.add_argument("--steps", type=int, default=3000, help="MD steps (default 3000)")
    p.add_argument("--dt", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="Langevin temperature in K (default 300)")
    p.add_argument("--friction", type=float, default=0.05, help="Langevin friction in 1/fs (default 0.05: direct forces heat, the thermostat must remove it)")
    p.add_argument("--max-frames", type=int, default=100, help="test frames used for accuracy, >= 1 (default 100)")
    p.add_argument("--out", default="fastfeat-demo", help="output directory (default fastfeat-demo)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where features and the network run (default auto: CUDA when a GPU and onnxruntime-gpu are "
                        "present, else CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and the Langevin noise (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)

    from fastfeat._validation import check_friction, check_int, check_number, check_timestep

    from ._structures import at_positions
    from .conservation import jacobian_asymmetry
    from .md import MDInstabilityError, run_md
    from .model import pretrained_names, resolve_model

    t_start = time.perf_counter()
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    created = not os.path.exists(args.out)
    try:
        if args.max_frames < 1:
            raise ValueError(f"`--max-frames` must be >= 1 (test frames used for accuracy), got {args.max_frames}")
        # the MD options named as options, before the model loads and the accuracy runs
        check_int(args.steps, "`--steps`", 1, " (the demo's MD steps)")
        check_timestep(args.dt, "`--dt`")
        check_number(args.temperature, "`--temperature`", minimum=0.0)
        check_friction(args.friction, "`--friction`")
        check_int(args.seed, "`--seed`", 0)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"`--out` {args.out!r} is a file: it names the folder the report is written into "
                             "(report.md and its plots); give a folder; nothing was run")
        try:  # fail now, not after the run, if the directory cannot be written
            os.makedirs(args.out, exist_ok=True)
            tempfile.TemporaryFile(dir=args.out).close()
        except OSError as exc:
            raise type(exc)(f"cannot write to `--out` {args.out!r}: {exc.strerror}; nothing was run") from None
        device, note = _pick_device(args.device)
        model = resolve_model(args.model, device=device)
        model.require_forces()
        bundled = args.model in pretrained_names() and not os.path.isfile(args.model)
        data_label, frames, scope = _load_frames(args.data, args.model if bundled else None)
        # a file or a whole data set may hold training frames: its figures are not called test errors
        test, where = ("test ", "") if scope == "test" else ("", " on the given data (not a test split)")
        if not frames:
            raise ValueError(f"the accuracy data {data_label} holds no frames")
        frames = frames[: args.max_frames]
        say(f"fastfeat demo: {model!r} on {device}; accuracy on {len(frames)} frames of {data_label}")

        # accuracy on the test split, batched
        preds = []
        for k in range(0, len(frames), 32):
            preds += model.forces_batch(frames[k:k + 32])
        pred = np.concatenate(preds)
        ref = np.concatenate([reference_forces(a) for a in frames])
        symbols = np.concatenate([a.get_chemical_symbols() for a in frames])
        acc = force_metrics(pred, ref, symbols)
        acc["n_frames"] = len(frames)
        say(f"  {test}MAE {acc['mae']:.4f} eV/Å, relative RMSE {acc['relative_rmse']:.4f}, cosine {acc['cosine']:.4f}"
            f"{where}")

        # MD from the first test frame
        atoms = frames[0].copy()
        atoms.calc = None
        say(f"  Langevin MD: {len(atoms)} atoms, {args.steps} steps of {args.dt} fs at {args.temperature} K")
        try:
            result = run_md(model, atoms, args.steps, dt=args.dt, temperature=args.temperature,
                            friction=args.friction, seed=args.seed, out=os.path.join(args.out, "md.extxyz"),
                            every=max(1, args.steps // 300), log=os.path.join(args.out, "md.log"),
                            progress=not args.quiet)
        except MDInstabilityError as exc:  # a finding about the model: report it, with the run up to there
            result = exc.result
            say(f"  MD stopped: {exc}")
        temps = result.log["temperature_K"]
        md = {
            "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms), "steps": result.steps_done,
            "dt_fs": args.dt, "temperature_K": args.temperature, "friction_per_fs": args.friction,
            "mean_temperature_K": float(temps[len(temps) // 2:].mean()) if len(temps) else float("nan"),
            "steps_per_s": result.steps_per_s,
            "atom_steps_per_s": result.atom_steps_per_s, "ns_per_day": result.ns_per_day,
            "n_rebuilds": result.n_rebuilds, "stopped_at": result.stopped_at, "stop_reason": result.stop_reason,
            "machine": _machine(device),
        }
        # is the last MD frame still inside the training data? (atoms with features outside the training range)
        md["extrapolating_end"] = md["extrapolation_end"] = None
        if model.feature_range is not None and result.steps_run:
            ex = model.extrapolation(at_positions(atoms, result.positions))
            md["extrapolating_end"], md["extrapolation_end"] = int(len(ex.atoms)), ex.summary()
        conservation = jacobian_asymmetry(model, atoms, seed=args.seed)  # whole Jacobian up to 128 atoms
        info = model.info
        summary = {
            "device": device, "device_note": note, "data": data_label, "accuracy_scope": scope,
            "model": {"name": args.model, "path": model.path, "head": info.head, "dtype": info.dtype.name,
                      "species": list(info.species), "data_hash": info.data_hash, "version": info.version,
                      "validation": info.validation},
            "accuracy": acc, "md": md, "conservation": conservation,
        }
        summary["plots"], summary["plot_note"] = _plots(args.out, ref, pred, symbols, result.log, args.dt,
                                                        args.temperature, scope)
        summary["wall_s"] = time.perf_counter() - t_start
        _report(os.path.join(args.out, "report.md"), summary)
        with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
            fh.write(json_text(summary, indent=2, default=str))
    except MDInstabilityError as exc:
        print(f"fastfeat demo: MD stopped: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        print(f"fastfeat demo: error: {exc}", file=sys.stderr)
        if created:  # a folder this call made and left empty (the device or the model failed) goes again
            with contextlib.suppress(OSError):
                os.rmdir(args.out)
        return 2
    if md["stopped_at"] is not None:
        print(f"fastfeat demo: MD stopped at step {md['stopped_at']} ({md['stop_reason']}); "
              f"report: {os.path.join(args.out, 'report.md')}", file=sys.stderr)
        return 3
    print(f"fastfeat demo: {test}relative RMSE {acc['relative_rmse']:.3f}{where}, MD {md['steps_per_s']:.0f} steps/s "
          f"({md['atom_steps_per_s']:.3g} atom-steps/s, {md['ns_per_day']:.2f} ns/day) on {device}; "
          f"report: {os.path.join(args.out, 'report.md')} ({summary['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
