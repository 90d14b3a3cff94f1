"""Reference-data generator: build -> relax -> Langevin MD with GFN1-xTB (tblite) -> extxyz frames.

Each trajectory ``k`` of a system is independent (its own structure seed, temperature and
thermostat seed) and runs in its own worker process with ``OMP_NUM_THREADS=1``. Frames are appended
to ``<out>.parts/t<k>.extxyz`` as they are made (flushed per frame), with energy (eV), forces (eV/Å),
momenta (so an interrupted trajectory continues from its last frame) and metadata in ``atoms.info``:
``system``, ``method`` ("GFN1-xTB"), ``temperature`` (K), ``seed``, ``step`` (MD step, 1 fs each),
``trajectory`` (k); a trajectory that reaches a pair closer than ``builders.MIN_PAIR_DISTANCE`` ends there
for good, its last stored frame carrying ``ended`` (the reason). When the run ends (all trajectories complete, or the wall-clock limit is hit),
the parts are merged, ordered by trajectory and step, into ``<out>`` (lzma-compressed when the name
ends in ``.xz``). A later run with the same arguments resumes: complete trajectories are skipped,
partial ones continue from their last frame (ended ones do not); when the parts folder is absent the trajectories are
recovered from ``<out>`` itself.

Runnable without installing the package::

    python3 train/datasets/generate.py peo --frames 450 --trajectories 5 --out peo.extxyz.xz

or, installed, ``fastfeat data generate peo ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import lzma
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the sibling modules are top-level imports, and fastfeat
    # is importable from the checkout this file lies in even when the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
    import builders  # type: ignore[no-redef]
else:
    from . import builders

from fastfeat._io import check_extxyz_path  # noqa: E402 (after the checkout is on sys.path)
from fastfeat._validation import check_int  # noqa: E402

__all__ = ["METHOD", "TrajectoryPlan", "generate", "main", "plan_trajectories", "run_trajectory"]

METHOD = "GFN1-xTB"
LABEL = "single point"  # atoms.info["label"]: energy and forces from a fresh SCF (no density reuse)
#: seconds a new trajectory needs before the deadline to be started at all (build, relaxation, first frames)
START_MARGIN = 60.0
log = logging.getLogger("fastfeat.data")

#: how :func:`check_settings` names each setting: Python keywords, or the command's options
PY_NAMES = {"n_frames": "`n_frames`", "temperatures": "`temperatures`", "n_trajectories": "`n_trajectories`",
            "stride": "`stride`", "workers": "`workers`", "time_limit": "`time_limit`",
            "relax_steps": "`relax_steps`", "first_trajectory": "`first_trajectory`", "seed": "`seed`",
            "out": "`out`", "parts": "`parts_dir`"}
CLI_NAMES = {"n_frames": "`--frames`", "temperatures": "`--temperatures`", "n_trajectories": "`--trajectories`",
             "stride": "`--stride`", "workers": "`--workers`", "time_limit": "`--time-limit`",
             "relax_steps": "`--relax-steps`", "first_trajectory": "`--first-trajectory`", "seed": "`--seed`",
             "out": "`--out`", "parts": "`--parts`"}


def check_settings(names=PY_NAMES, **values):
    """TypeError (not an int) or ValueError naming the setting and its value when a generator setting is out of range.

    Counts (``n_frames``, ``n_trajectories``, ``stride``, ``workers``) must be >= 1,
    ``relax_steps``, ``first_trajectory`` and ``seed`` >= 0, every temperature a finite number > 0 K and
    ``time_limit`` (seconds) >= 0; ``None`` (workers, time_limit) and a time limit of 0 mean none.
    """
    for key, minimum in (("n_frames", 1), ("n_trajectories", 1), ("stride", 1), ("workers", 1), ("relax_steps", 0),
                         ("first_trajectory", 0), ("seed", 0)):
        if values.get(key) is not None:
            check_int(values[key], names[key], minimum)
    if "temperatures" in values:
        temps = values["temperatures"]
        if isinstance(temps, (int, float)):
            temps = [temps]
        temps = list(temps)
        if not temps:
            raise ValueError(f"{names['temperatures']} must list at least one temperature (K)")
        for t in temps:
            if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not math.isfinite(t) or t <= 0:
                raise ValueError(f"{names['temperatures']} must be finite temperatures > 0 K, got {t!r}")
    v = values.get("time_limit")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
        raise ValueError(f"{names['time_limit']} must be a number of seconds >= 0 (0: no limit), got {v!r}")


class TrajectoryPlan:
    """Parameters of one independent trajectory.

    Attributes
    ----------
    system : str
    index : int
        Trajectory id (``atoms.info["trajectory"]``).
    temperature : float
        Langevin temperature, K.
    seed : int
        Seeds the builder, the initial velocities and the thermostat noise.
    n_frames : int
        Frames wanted from this trajectory.
    stride : int
        MD steps (fs) between frames.
    path : pathlib.Path
        Part file the frames are appended to.
    """

    def __init__(self, system, index, temperature, seed, n_frames, stride, path, relax_steps=30, friction=0.01):
        self.system = system
        self.index = int(index)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.n_frames = int(n_frames)
        self.stride = int(stride)
        self.path = Path(path)
        self.relax_steps = int(relax_steps)
        self.friction = float(friction)

    def __repr__(self):
        return (f"TrajectoryPlan({self.system!r}, index={self.index}, T={self.temperature:g} K, "
                f"seed={self.seed}, n_frames={self.n_frames}, stride={self.stride})")


def plan_trajectories(system, n_frames, temperatures, n_trajectories, stride, parts_dir, seed=0, relax_steps=30,
                      first_trajectory=0):
    """Split ``n_frames`` over ``n_trajectories`` trajectories cycling through ``temperatures``.

    Trajectory ids run from ``first_trajectory``; id ``k`` is seeded with ``1000 * seed + k``, so new
    trajectories can be added to an existing data set without repeating a structure.
    """
    if system not in builders.BUILDERS:
        raise ValueError(f"`system` must be one of {sorted(builders.BUILDERS)}, got {system!r}")
    if first_trajectory < 0:
        raise ValueError(f"`first_trajectory` must be >= 0, got {first_trajectory}")
    if n_trajectories < 1 or n_frames < 1 or stride < 1:
        raise ValueError(f"`n_frames`, `n_trajectories` and `stride` must be >= 1, got {n_frames}, "
                         f"{n_trajectories}, {stride}")
    per = math.ceil(n_frames / n_trajectories)
    return [
        TrajectoryPlan(system, k, temperatures[k % len(temperatures)], 1000 * int(seed) + k, per, stride,
                       Path(parts_dir) / f"t{k:02d}.extxyz", relax_steps)
        for k in range(first_trajectory, first_trajectory + n_trajectories)
    ]


def _open_text(path, mode="rt"):
    path = str(path)
    return lzma.open(path, mode) if path.endswith(".xz") else open(path, mode)


def _read_frames(path):
    from ase.io import read

    with _open_text(path) as fh:
        text = io.StringIO(fh.read())  # extxyz seeks; seeking an lzma stream is quadratic
    if not text.getvalue().strip():
        return []
    return read(text, index=":", format="extxyz")


def _read_checked(path, what):
    """Frames of ``path``; ValueError naming ``what`` and the file when it is not readable extxyz."""
    try:
        return _read_frames(path)
    except Exception as exc:  # noqa: BLE001 -- ase raises many kinds on a malformed or truncated file
        raise ValueError(f"{what} {str(path)!r} cannot be read as extxyz ({type(exc).__name__}: {exc}); "
                         f"it is not (or no longer) a file written by `fastfeat data generate`") from None


def _check_stored(frames, plan, where, names=PY_NAMES):
    """ValueError when stored ``frames`` of ``plan``'s trajectory were made with another system, seed or
    temperature (reusing them would mix data sets); ``where`` names the file they are in."""
    for atoms in frames:
        info = atoms.info
        try:
            same = (str(info["system"]) == plan.system and int(info["seed"]) == plan.seed
                    and math.isclose(float(info["temperature"]), plan.temperature, rel_tol=1e-9))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where} has frames of trajectory {plan.index} without `system`, `seed` or "
                             f"`temperature` info: it was not written by `fastfeat data generate`; give another "
                             f"{names['out']} (or {names['parts']})") from None
        if not same:
            raise ValueError(
                f"{where} holds trajectory {plan.index} made with system={info['system']!r}, seed={info['seed']}, "
                f"temperature={float(info['temperature']):g} K, but this command plans system={plan.system!r}, "
                f"seed={plan.seed}, temperature={plan.temperature:g} K for it; give another {names['out']} "
                f"(or {names['parts']}), or the settings it was made with; nothing was run")


def _check_existing(out, parts_dir, plans, names=PY_NAMES):
    """Before anything is created: the frames a run would continue (the part files, else ``out``) must be
    readable, carry ``trajectory`` info and match the plans; returns ``out``'s frames when they are to be
    recovered (no part files), else None."""
    by_plan = {p.index: p for p in plans}
    parts = sorted(parts_dir.glob("t*.extxyz")) if parts_dir.is_dir() else []
    if parts:
        for part in parts:
            frames = _read_checked(part, "part file")
            where = f"part file {str(part)!r}"
            if any("trajectory" not in a.info for a in frames):
                raise ValueError(f"{where} has frames without `trajectory` info: it was not written by "
                                 f"`fastfeat data generate`; give another {names['parts']}")
            for k in {int(a.info["trajectory"]) for a in frames}:
                if k in by_plan:
                    _check_stored([a for a in frames if int(a.info["trajectory"]) == k], by_plan[k], where, names)
        return None
    if not out.exists():
        return None
    frames = _read_checked(out, f"{names['out']} file")
    if any("trajectory" not in a.info for a in frames):
        raise ValueError(f"{names['out']} {str(out)!r} exists and has frames without `trajectory` info: it was not "
                         f"written by `fastfeat data generate`; give a new output file (it would be replaced)")
    for k, plan in by_plan.items():
        _check_stored([a for a in frames if int(a.info["trajectory"]) == k], plan, f"{names['out']} file {str(out)!r}",
                      names)
    return frames


def _calculator():
    from tblite.ase import TBLite

    return TBLite(method=METHOD, verbosity=0)


def _frame(atoms, energy, forces_nc, plan, step):
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.array(forces_nc))
    frame.info.update(system=plan.system, method=METHOD, temperature=plan.temperature, seed=plan.seed,
                      step=int(step), trajectory=plan.index, label=LABEL)
    return frame


def _append(path, frame):
    from ase.io import write

    with open(path, "a") as fh:
        write(fh, frame, format="extxyz")
        fh.flush()
        os.fsync(fh.fileno())


def _ended(frames) -> str:
    """Why a trajectory ended before its planned frames ("" if it did not): ``info["ended"]`` of its last frame."""
    return str(frames[-1].info.get("ended", "")) if frames else ""


def _replace_frames(path: Path, frames):
    """Write ``frames`` to ``path`` through a synced temporary file beside it (same suffix, so the same
    compression), then put it in place: a reader, or a run killed meanwhile, never finds half a file."""
    from ase.io import write

    tmp = path.with_name(".tmp-" + path.name)
    with _open_text(tmp, "wt") as fh:
        write(fh, frames, format="extxyz")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _mark_ended(path: Path, why: str):
    """Record in the last stored frame of a part file that its trajectory ends there."""
    frames = _read_frames(path)
    frames[-1].info["ended"] = why
    _replace_frames(path, frames)


def run_trajectory(plan: TrajectoryPlan, deadline: float = math.inf, progress=None) -> int:
    """Run (or continue) one trajectory; returns the number of frames stored in its part file.

    SCF failures (any exception from tblite) are logged; the MD restarts from the last good state
    with fresh thermostat noise and a fresh calculator. Stops at ``deadline`` (``time.time()``); a
    trajectory not started, or stopped before its first frame, for lack of time says so in a warning.
    A frame with a pair closer than :data:`MIN_PAIR_DISTANCE` ends the trajectory for good: the
    last stored frame gets ``info["ended"]`` (the reason), and a resume does not continue it.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd
    from ase.optimize import FIRE

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    done = _read_checked(plan.path, "part file") if plan.path.exists() else []
    _check_stored(done, plan, f"part file {str(plan.path)!r}")
    if len(done) >= plan.n_frames or _ended(done):
        return len(done)
    rng = np.random.default_rng([plan.seed, len(done)])
    if done:
        atoms = done[-1].copy()  # positions and momenta of the last stored frame
        atoms.calc = None
        step = int(done[-1].info["step"])
    else:
        if time.time() > deadline - START_MARGIN:  # not worth starting: nothing would be stored
            log.warning("%s t%02d: not started: %.0f s were left before the time limit, under the %.0f s a new "
                        "trajectory needs", plan.system, plan.index, max(deadline - time.time(), 0.0), START_MARGIN)
            return 0
        atoms = builders.build(plan.system, np.random.default_rng(plan.seed))
        atoms.calc = _calculator()
        try:
            for _ in FIRE(atoms, logfile=None).irun(fmax=0.1, steps=plan.relax_steps):
                if time.time() > deadline:
                    log.warning("%s t%02d: the time limit came during the relaxation; no frame stored",
                                plan.system, plan.index)
                    return 0
        except Exception as exc:  # noqa: BLE001 -- tblite raises plain exceptions on SCF failure
            log.warning("%s t%02d: relaxation failed (%s); starting MD from the last geometry",
                        plan.system, plan.index, exc)
        if hasattr(vd, "thermalize_momenta"):  # ase >= 3.29; MaxwellBoltzmannDistribution is deprecated there
            vd.thermalize_momenta(atoms, plan.temperature, rng=rng)
        else:
            vd.MaxwellBoltzmannDistribution(atoms, temperature_K=plan.temperature, rng=rng)
        vd.Stationary(atoms)
        step = 0
    n_stored = len(done)
    failures = 0
    while n_stored < plan.n_frames and time.time() < deadline:
        good_pos, good_mom, good_step = atoms.get_positions(), atoms.get_momenta(), step
        atoms.calc = _calculator()
        dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=plan.temperature,
                       friction=plan.friction / units.fs, rng=rng, fixcm=False)
        try:
            while n_stored < plan.n_frames and time.time() < deadline:
                dyn.run(plan.stride)
                step += plan.stride
                # label with a fresh calculator: its SCF starts from tblite's default guess, so the
                # stored forces are exactly what a single point on the stored frame gives
                atoms.calc = _calculator()
                energy = atoms.get_potential_energy()
                forces_nc = atoms.get_forces()
                if not (np.isfinite(energy) and np.all(np.isfinite(forces_nc))):
                    raise RuntimeError("non-finite energy or forces")
                closest = builders.min_pair_distance(atoms)
                if closest < builders.MIN_PAIR_DISTANCE.get(plan.system, 0.0):
                    # new chemistry (li4p2o7: an O-O bond, 1.24 Å) or a collapse: the frame would
                    # break the data set's documented minimum distance, so the trajectory ends here
                    why = (f"closest pair {closest:.3f} A < {builders.MIN_PAIR_DISTANCE[plan.system]:.2f} A "
                           f"(MIN_PAIR_DISTANCE) at step {step}")
                    if n_stored:
                        _mark_ended(plan.path, why)
                    log.warning("%s t%02d: %s; trajectory ended with %d frames%s", plan.system, plan.index, why,
                                n_stored, "" if n_stored else " (a rerun with this seed would end the same way: "
                                "another seed or first trajectory gives another structure)")
                    return n_stored
                _append(plan.path, _frame(atoms, energy, forces_nc, plan, step))
                n_stored += 1
                failures = 0
                good_pos, good_mom, good_step = atoms.get_positions(), atoms.get_momenta(), step
                if progress is not None:
                    progress.put((plan.system, plan.index, n_stored))
        except Exception as exc:  # noqa: BLE001
            failures += 1
            log.warning("%s t%02d step %d: %s failed (%s); restarting from the last good state (%d)",
                        plan.system, plan.index, step, METHOD, exc, failures)
            if failures > 5:
                log.error("%s t%02d: giving up after %d failures in a row", plan.system, plan.index, failures)
                break
            atoms.set_positions(good_pos)
            atoms.set_momenta(good_mom)
            step = good_step
            rng = np.random.default_rng([plan.seed, n_stored, failures, 7])
    if n_stored == 0 and time.time() >= deadline:
        log.warning("%s t%02d: the time limit came before the first frame; no frame stored", plan.system, plan.index)
    return n_stored


def _worker(args):
    plan, deadline, queue = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        return plan.index, run_trajectory(plan, deadline, queue), None
    except Exception as exc:  # noqa: BLE001 -- report, never kill the pool
        return plan.index, -1, repr(exc)


def _init_worker():
    os.environ["OMP_NUM_THREADS"] = "1"


def _recover_parts(out: Path, parts_dir: Path, frames=None):
    """Split an existing merged output into per-trajectory part files (resume without parts).

    ValueError (before anything is created) when ``out`` is unreadable or has frames without ``trajectory`` info.
    """
    if (parts_dir.is_dir() and any(parts_dir.glob("t*.extxyz"))) or not out.exists():
        parts_dir.mkdir(parents=True, exist_ok=True)
        return
    from ase.io import write

    if frames is None:
        frames = _read_checked(out, "`out` file")
        if any("trajectory" not in a.info for a in frames):
            raise ValueError(f"`out` {str(out)!r} has frames without `trajectory` info: it was not written by "
                             f"`fastfeat data generate`")
    parts_dir.mkdir(parents=True, exist_ok=True)
    by_traj: dict[int, list] = {}
    for atoms in frames:
        by_traj.setdefault(int(atoms.info["trajectory"]), []).append(atoms)
    for k, traj in by_traj.items():
        with open(parts_dir / f"t{k:02d}.extxyz", "w") as fh:
            write(fh, traj, format="extxyz")
    log.info("recovered %d frames of %d trajectories from %s", len(frames), len(by_traj), out)


def merge_parts(parts_dir: Path, out: Path) -> int:
    """Merge the part files into ``out`` (ordered by trajectory, then step); returns frame count.

    Frames without ``trajectory`` info count as trajectory 0, without ``step`` info their index in their
    part file is the step (their order is kept).
    """
    frames, keys = [], []
    for part in sorted(parts_dir.glob("t*.extxyz")):
        for i, atoms in enumerate(_read_checked(part, "part file")):
            frames.append(atoms)
            keys.append((int(atoms.info.get("trajectory", 0)), int(atoms.info.get("step", i)), len(keys)))
    if not frames:
        return 0  # nothing to write: an empty output would only look like a data set
    _replace_frames(out, [frames[key[2]] for key in sorted(keys)])
    return len(frames)


def generate(system, out, n_frames=450, temperatures=(300.0, 600.0, 1000.0), n_trajectories=5, stride=3,
             workers=None, seed=0, time_limit=None, relax_steps=30, parts_dir=None, stream=None,
             first_trajectory=0, names=PY_NAMES):
    """Generate (or resume) a reference data set; see the module docstring. Returns frames written.

    Raises
    ------
    ValueError
        A setting out of range (:func:`check_settings`, before anything is created), or a
        ``time_limit`` under :data:`START_MARGIN` seconds when every trajectory still to run is new
        (none could store a frame), or stored frames (``out`` or the part files) that are unreadable, lack
        ``trajectory`` info (not written by this generator) or were made with another system, seed or
        temperature than planned for their trajectory (also before anything is created). ``names``: how
        messages name the settings (:data:`PY_NAMES` or :data:`CLI_NAMES`).
    MissingTblite
        (an ImportError) tblite is not installed; checked after the settings and files, before anything is created.
    """
    stream = sys.stderr if stream is None else stream  # at call time: sys.stderr may be replaced

    if system not in builders.BUILDERS:
        raise ValueError(f"`system` must be one of {sorted(builders.BUILDERS)}, got {system!r}")
    check_settings(n_frames=n_frames, temperatures=temperatures, n_trajectories=n_trajectories, stride=stride,
                   workers=workers, time_limit=time_limit, relax_steps=relax_steps, first_trajectory=first_trajectory,
                   seed=seed)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{names['out']} {str(out)!r} is a folder; give the output file")
    check_extxyz_path(out, names["out"], allow_xz=True)  # written as extxyz text: another extension would not read back
    parts_dir = Path(parts_dir) if parts_dir else out.with_name(out.name + ".parts")
    short = bool(time_limit) and time_limit < START_MARGIN
    why = (f"time limit of {time_limit:g} s is under {START_MARGIN:g} s, the least a new trajectory is started "
           f"with (build, relaxation, first frames)") if short else ""
    if short and not out.exists() and not any(parts_dir.glob("t*.extxyz")):  # nothing to continue
        raise ValueError(f"{why}: no trajectory could store a frame; give a longer time limit "
                         f"(>= {START_MARGIN:g} s) or none; nothing was run")
    plans = plan_trajectories(system, n_frames, list(temperatures), n_trajectories, stride, parts_dir, seed,
                              relax_steps, first_trajectory)
    recovered = _check_existing(out, parts_dir, plans, names)
    require_tblite()
    _recover_parts(out, parts_dir, recovered)
    workers = workers or os.cpu_count() or 1
    start = time.time()
    deadline = start + time_limit if time_limit else math.inf
    stored = {p.index: (_read_frames(p.path) if p.path.exists() else []) for p in plans}
    counts = {k: len(frames) for k, frames in stored.items()}
    todo = [p for p in plans if counts[p.index] < p.n_frames and not _ended(stored[p.index])]
    new = [p for p in todo if counts[p.index] == 0]
    if short and new:
        if len(new) == len(todo):
            raise ValueError(f"{why}: none of the {len(new)} trajectories to run could store a frame; give a longer "
                             f"time limit (>= {START_MARGIN:g} s) or none; nothing was run")
        print(f"[{system}] {why}: trajectories " + " ".join(f"t{p.index}" for p in new)
              + " are not started; only the partial ones continue", file=stream, flush=True)
    print(f"[{system}] {sum(counts.values())}/{sum(p.n_frames for p in plans)} frames present; "
          f"{len(todo)} of {len(plans)} trajectories to run on {min(workers, max(len(todo), 1))} workers",
          file=stream, flush=True)
    if todo:
        try:
            _run_pool(system, plans, todo, workers, deadline, counts, start, stream)
        except KeyboardInterrupt:  # Ctrl-C: the frames stored so far stay in the part files
            print(f"[{system}] interrupted: the frames stored so far ({sum(counts.values())} by the last progress "
                  f"report) stay in {str(parts_dir)!r}; the same command again continues from them", file=stream,
                  flush=True)
            raise
    n = merge_parts(parts_dir, out)
    stored = {p.index: (_read_frames(p.path) if p.path.exists() else []) for p in plans}
    complete = sum(1 for p in plans if len(stored[p.index]) >= p.n_frames)
    ended = {p.index: _ended(stored[p.index]) for p in plans
             if len(stored[p.index]) < p.n_frames and _ended(stored[p.index])}
    if n == 0:
        print(f"[{system}] no frame was stored, {out} not written ({time.time() - start:.0f} s); "
              f"see the warnings above", file=stream, flush=True)
        return 0
    print(f"[{system}] wrote {n} frames to {out} ({complete}/{len(plans)} trajectories complete"
          + (f", {len(ended)} ended early" if ended else "") + f", {time.time() - start:.0f} s)", file=stream, flush=True)
    for k, why in sorted(ended.items()):
        print(f"[{system}] t{k:02d} ended for good after {len(stored[k])} frames: {why}; a rerun does not continue "
              f"it (more frames: more trajectories, {names['n_trajectories']} or {names['first_trajectory']})", file=stream, flush=True)
    if complete + len(ended) < len(plans):
        print(f"[{system}] INCOMPLETE: {len(plans) - complete - len(ended)} trajectories are missing or partial (the time "
              f"limit, or a failure reported above, stopped them); the same command again continues them", file=stream, flush=True)
    return n


def _run_pool(system, plans, todo, workers, deadline, counts, start, stream):
    """Run the trajectories `todo` in spawned worker processes, printing progress every 20 s; `counts`
    (trajectory index -> frames stored) is updated as the workers report."""
    import multiprocessing as mp

    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker) as pool:
        result = pool.map_async(_worker, [(p, deadline, queue) for p in todo], chunksize=1)
        last = 0.0
        total = sum(p.n_frames for p in plans)
        while not result.ready():
            while not queue.empty():
                _system, k, n = queue.get()
                counts[k] = n
            if time.time() - last > 20.0:
                last = time.time()
                print(f"[{system}] {sum(counts.values())}/{total} frames, {time.time() - start:.0f} s, "
                      + " ".join(f"t{k}:{n}" for k, n in sorted(counts.items())), file=stream, flush=True)
            result.wait(1.0)
        for k, n, err in result.get():
            if err:
                print(f"[{system}] trajectory {k} failed: {err}", file=stream, flush=True)
    manager.shutdown()


def build_parser(prog="fastfeat data generate"):
    p = argparse.ArgumentParser(prog=prog, description="Generate GFN1-xTB (tblite) reference frames by Langevin MD.")
    p.add_argument("name", choices=sorted(builders.BUILDERS), help="system to build")
    p.add_argument("--frames", type=int, default=450, help="total frames wanted, split over the trajectories (each runs ceil(frames / trajectories))")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0, 1000.0],
                   help="Langevin temperatures in K, cycled over the trajectories")
    p.add_argument("--trajectories", type=int, default=5, help="independent trajectories")
    p.add_argument("--stride", type=int, default=3, help="MD steps (1 fs) between frames")
    p.add_argument("--out", required=True, help="output extxyz file (.xz: lzma-compressed)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--relax-steps", type=int, default=30, help="FIRE steps before the MD (force-call cap)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="wall-clock seconds after which workers stop and the output is written (0: none); a new "
                        f"trajectory is only started with at least {START_MARGIN:g} s left")
    p.add_argument("--first-trajectory", type=int, default=0,
                   help="id of the first trajectory; trajectories already in OUT are kept, so this adds new ones")
    p.add_argument("--parts", default=None, help="folder for the per-trajectory files (default OUT.parts)")
    return p


class MissingTblite(ImportError):
    """tblite (the ``[data]`` extra) is not installed; raised before anything is created."""


def require_tblite():
    """MissingTblite unless tblite can be imported (the workers import it only at their first single point,
    so without this check every trajectory failed on its own and left its folder behind)."""
    if importlib.util.find_spec("tblite") is None:
        raise MissingTblite('needs tblite (GFN1-xTB): pip install "fastfeat[data]" (see README)')


def run_command(prog, body) -> int:
    """Exit status of a data command: ``body()`` returns the frames written; 2 (message on stderr) for
    bad settings, unusable files or a missing tblite (ValueError/TypeError/OSError/MissingTblite), 1 when
    no frame was written, else 0."""
    try:
        n = body()
    except (ValueError, TypeError, OSError, MissingTblite) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if n == 0:
        print(f"{prog}: error: no frame was written (see the messages above)", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``fastfeat data generate`` entry point: 0 on success, 2 for bad settings, 1 when no frame was written."""
    prog = "fastfeat data generate"
    args = build_parser(prog).parse_args(argv)
    return run_command(prog, lambda: _generate_from_args(args))


def _generate_from_args(args) -> int:
    """Validate the settings of ``fastfeat data generate``, then run it; frames written."""
    check_settings(CLI_NAMES, n_frames=args.frames, temperatures=args.temperatures,
                   n_trajectories=args.trajectories, stride=args.stride, workers=args.workers,
                   time_limit=args.time_limit, relax_steps=args.relax_steps,
                   first_trajectory=args.first_trajectory, seed=args.seed)
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a folder; give the output file")
    if args.parts and os.path.exists(args.parts) and not os.path.isdir(args.parts):
        raise ValueError(f"--parts {args.parts!r} is a file; give a folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return generate(args.name, args.out, args.frames, args.temperatures, args.trajectories, args.stride,
                    args.workers, args.seed, args.time_limit, args.relax_steps, args.parts,
                    first_trajectory=args.first_trajectory, names=CLI_NAMES)


if __name__ == "__main__":
    sys.exit(main())
