"""Bundled GFN1-xTB reference data, the reader and the structure builders (fastfeat.train.datasets)."""

import io
import json
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from fastfeat.train import datasets

ROOT = Path(__file__).resolve().parents[2]
ELEMENTS = {"peo": {"C", "H", "O"}, "li4p2o7": {"Li", "P", "O"}, "li4p2o7-water": {"H", "Li", "O", "P"}}
N_ATOMS = {"peo": 112, "li4p2o7": 65, "li4p2o7-water": 89}
NAMES = sorted(ELEMENTS)


def test_available_lists_the_three_bundled_sets():
    assert datasets.available() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_bundled_set_counts_elements_shapes_units(name):
    frames = datasets.load(name, split="all")
    assert len(frames) >= 400
    trajectories = {int(a.info["trajectory"]) for a in frames}
    assert len(trajectories) >= 4
    temperatures = {float(a.info["temperature"]) for a in frames}
    assert min(temperatures) <= 300.0 and max(temperatures) >= 1000.0
    for a in frames:
        assert set(a.get_chemical_symbols()) == ELEMENTS[name]
        assert len(a) == N_ATOMS[name]
        forces_nc = a.get_forces()
        assert forces_nc.shape == (len(a), 3) and forces_nc.dtype == np.float64
        assert np.all(np.isfinite(forces_nc))
        assert np.isfinite(a.get_potential_energy())
        assert a.info["system"] == name and a.info["method"] == "GFN1-xTB"
        assert a.pbc.all() and a.cell.volume > 0
    f_all = np.concatenate([a.get_forces() for a in frames])
    # eV/Å: thermal forces are O(1) eV/Å; a Hartree/Bohr mix-up would be ~20x off
    assert 0.3 < np.sqrt(np.mean(f_all**2)) < 3.0
    assert np.abs(f_all).max() < 30.0
    # energies in eV (GFN1-xTB totals are thousands of eV for these cells), one energy per frame
    e = np.array([a.get_potential_energy() for a in frames])
    assert np.all(e < -1000.0)


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_whole_disjoint_trajectories(name):
    ids = {s: {int(a.info["trajectory"]) for a in datasets.load(name, split=s)} for s in ("train", "val", "test")}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    everything = datasets.load(name, split="all")
    assert ids["train"] | ids["val"] | ids["test"] == {int(a.info["trajectory"]) for a in everything}
    n = sum(len(datasets.load(name, split=s)) for s in ("train", "val", "test"))
    assert n == len(everything)
    # whole trajectories: every frame of a test trajectory is in the test split
    test_frames = datasets.load(name, split="test")
    assert len(test_frames) == sum(int(a.info["trajectory"]) in ids["test"] for a in everything)
    # deterministic
    assert datasets.split_trajectories(everything) == datasets.split_trajectories(everything[::-1])


def test_load_returns_independent_copies():
    a = datasets.load("li4p2o7", split="val")[0]
    a.positions += 1.0
    a.calc.results["forces"][:] = 0.0
    b = datasets.load("li4p2o7", split="val")[0]
    assert not np.allclose(a.positions, b.positions)
    assert np.abs(b.get_forces()).max() > 0.0


def test_load_rejects_unknown_name_and_split():
    with pytest.raises(ValueError, match="bundled data sets"):
        datasets.load("no-such-set")
    with pytest.raises(ValueError, match="`split`"):
        datasets.load("peo", split="training")


def _frames(n=3, n_atoms=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = Atoms("H2O2"[: 2 * n_atoms], positions=rng.uniform(0, 5, (n_atoms, 3)), cell=np.eye(3) * 6, pbc=True)
        a.info["trajectory"] = k % 2
        out.append((a, rng.normal(size=(n_atoms, 3)), float(rng.normal())))
    return out


def _custom_key_frames():
    """_frames() with forces in the REF_forces column and energies in info["REF_energy"]: [(atoms, f, e)]."""
    out = []
    for a, f, e in _frames():
        a = a.copy()
        a.arrays["REF_forces"] = f
        a.info["REF_energy"] = e
        out.append((a, f, e))
    return out


def test_read_custom_keys_extxyz(tmp_path):
    path = tmp_path / "mine.extxyz"
    ref = _custom_key_frames()
    for a, _f, _e in ref:
        write(path, a, format="extxyz", append=True)
    frames = datasets.read(path, forces_key="REF_forces", energy_key="REF_energy")
    assert len(frames) == 3
    for got, (_a, f, e) in zip(frames, ref):
        np.testing.assert_allclose(got.get_forces(), f, atol=1e-7)
        assert got.get_potential_energy() == pytest.approx(e)
    one = datasets.read(path, forces_key="REF_forces", index=1)
    np.testing.assert_allclose(one[0].get_forces(), ref[1][1], atol=1e-7)


def test_read_default_keys_compressed_and_other_formats(tmp_path):
    frames = []
    for a, f, e in _frames():
        a = a.copy()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    xz = tmp_path / "data.extxyz.xz"
    with lzma.open(xz, "wt") as fh:
        write(fh, frames, format="extxyz")
    traj = tmp_path / "data.traj"
    write(traj, frames)  # ASE trajectory: forces as calculator results
    for path in (xz, traj):
        got = datasets.read(path)
        assert len(got) == 3
        for g, a in zip(got, frames):
            np.testing.assert_allclose(g.get_forces(), a.get_forces(), atol=1e-7)
            assert g.get_potential_energy() == pytest.approx(a.get_potential_energy())


def test_read_missing_forces_key_names_key_file_frame(tmp_path):
    path = tmp_path / "noforces.extxyz"
    a, f, _e = _frames(n=1)[0]
    b = a.copy()
    b.arrays["REF_forces"] = f
    write(path, [b, a], format="extxyz")  # frame 0 has the key, frame 1 has not
    with pytest.raises(ValueError) as err:
        datasets.read(path, forces_key="REF_forces")
    msg = str(err.value)
    assert "'REF_forces'" in msg and "noforces.extxyz" in msg and "frame 1" in msg


def test_momenta_are_never_suggested_or_read_as_forces(tmp_path):
    """A file with velocities but no forces: the hint must not send the user to `--forces-key momenta` (same
    shape as forces), and that key is refused outright; a real force column is still suggested."""
    path = tmp_path / "md.extxyz"
    a, f, _e = _frames(n=1)[0]
    a = a.copy()
    a.calc = None
    a.set_momenta(np.ones((len(a), 3)))
    write(path, [a], format="extxyz")
    with pytest.raises(ValueError, match="not found") as err:
        datasets.read(path)
    assert "momenta" not in str(err.value).split("results there")[1].split("]", 1)[1]
    assert "--forces-key" not in str(err.value)
    for key in ("momenta", "positions", "masses"):
        with pytest.raises(ValueError, match=f"`forces_key` '{key}' names one of ASE's own quantities, never the forces"):
            datasets.read(path, forces_key=key)
    a.arrays["REF_forces"] = f
    write(path, [a], format="extxyz")
    with pytest.raises(ValueError, match=r"if the forces are one of \['REF_forces'\].*--forces-key REF_forces"):
        datasets.read(path)


def test_read_nan_forces_names_frame(tmp_path):
    path = tmp_path / "nan.extxyz"
    frames = []
    for k, (a, f, _e) in enumerate(_frames()):
        if k == 2:
            f[1, 0] = np.nan
        a = a.copy()
        a.arrays["REF_forces"] = f
        frames.append(a)
    write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"frame 2 .*not finite \(first at atom 1\)"):
        datasets.read(path, forces_key="REF_forces")
    # a selection names the frame by its number in the file where the index tells it, else says it is the
    # selection's
    n = len(_frames())
    assert n >= 3
    for index in ("1:", slice(0, None, 2), 2):
        with pytest.raises(ValueError, match=r"of frame 2 of .*nan.extxyz' are not finite"):
            datasets.read(path, forces_key="REF_forces", index=index)
    with pytest.raises(ValueError, match=rf"of frame 1 of those selected by index='-{n - 1}:'"):
        datasets.read(path, forces_key="REF_forces", index=f"-{n - 1}:")


def test_read_missing_file():
    with pytest.raises(ValueError, match="`path` must be an existing file"):
        datasets.read("/nonexistent/file.extxyz")


@pytest.mark.parametrize("name", NAMES)
def test_stored_frame_reproduced_by_tblite(name):
    """A stored frame of each system (the last one: a test-split trajectory), recomputed with a
    fresh tblite GFN1-xTB single point, gives the stored forces to 1e-4 eV/Å and energy to 1e-5 eV.

    Every stored frame is labelled by a fresh single point (``atoms.info["label"]``), so the only
    difference left is floating-point noise of the SCF (~1e-7 eV/Å)."""
    tblite_ase = pytest.importorskip("tblite.ase")
    frames = datasets.load(name, split="all")
    assert all(a.info.get("label") == datasets.LABEL for a in frames)
    frame = frames[-1]
    atoms = frame.copy()
    atoms.calc = tblite_ase.TBLite(method="GFN1-xTB", verbosity=0)
    diff = np.abs(atoms.get_forces() - frame.get_forces())
    assert diff.max() <= 1e-4, diff.max()
    assert atoms.get_potential_energy() == pytest.approx(frame.get_potential_energy(), abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_builders_respect_documented_minimum_distance(name):
    for seed in range(3):
        atoms = datasets.build(name, seed)
        assert len(atoms) == N_ATOMS[name]
        assert set(atoms.get_chemical_symbols()) == ELEMENTS[name]
        assert datasets.min_pair_distance(atoms) > datasets.MIN_PAIR_DISTANCE[name]
    again = datasets.build(name, 0)
    np.testing.assert_array_equal(again.positions, datasets.build(name, 0).positions)
    assert not np.allclose(again.positions, datasets.build(name, 1).positions)


@pytest.mark.parametrize("name", NAMES)
def test_stored_frames_respect_documented_minimum_distance(name):
    """Every stored frame (relaxed, then MD at 300-1000 K) keeps the documented minimum distance."""
    for atoms in datasets.load(name, split="all")[::5]:
        assert datasets.min_pair_distance(atoms) > datasets.MIN_PAIR_DISTANCE[name], atoms.info


def test_builder_densities():
    amu_per_A3_to_g_cm3 = 1.0 / 0.602214076
    peo = datasets.build("peo", 0)
    li = datasets.build("li4p2o7", 0)
    assert peo.get_masses().sum() / peo.get_volume() * amu_per_A3_to_g_cm3 == pytest.approx(1.1, rel=0.01)
    assert li.get_masses().sum() / li.get_volume() * amu_per_A3_to_g_cm3 == pytest.approx(2.3, rel=0.01)
    slab = datasets.build("li4p2o7-water", 0)
    z_n = slab.positions[:, 2]
    water_o = [i for i, s in enumerate(slab.get_chemical_symbols()) if s == "O"
               and any(slab.get_chemical_symbols()[j] == "H" and slab.get_distance(i, j, mic=True) < 1.1
                       for j in range(len(slab)))]
    assert len(water_o) == 8
    slab_top = max(z for z, s in zip(z_n, slab.get_chemical_symbols()) if s == "P")
    assert min(z_n[water_o]) > slab_top
    assert slab.cell[2, 2] - z_n.max() > 10.0  # vacuum gap along z


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="`name`"):
        datasets.build("graphene", 0)
    with pytest.raises(TypeError, match="`seed`"):
        datasets.build("peo", "zero")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FASTFEAT_SLOW"), reason="set FASTFEAT_SLOW=1 (about 2 min)")
def test_relaxation_keeps_documented_minimum_distance():
    tblite_ase = pytest.importorskip("tblite.ase")
    from ase.optimize import FIRE

    atoms = datasets.build("li4p2o7", 0)
    atoms.calc = tblite_ase.TBLite(method="GFN1-xTB", verbosity=0)
    FIRE(atoms, logfile=None).run(fmax=0.1, steps=15)
    assert datasets.min_pair_distance(atoms) > datasets.MIN_PAIR_DISTANCE["li4p2o7"]


def test_generator_script_plans_and_resumes(tmp_path):
    """Planning, merging and resuming without tblite: stored parts count as done work."""
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    # seed 0: the stored frames below (bundled trajectory 0) were made with it
    plans = gen.plan_trajectories("peo", 10, [300.0, 1000.0], 4, 3, tmp_path / "parts", seed=0)
    assert [p.n_frames for p in plans] == [3, 3, 3, 3]
    assert [p.temperature for p in plans] == [300.0, 1000.0, 300.0, 1000.0]
    assert len({p.seed for p in plans}) == 4
    # a finished trajectory is skipped by run_trajectory (no tblite needed)
    frames = datasets.load("peo", split="all")[:3]
    (tmp_path / "parts").mkdir()
    write(plans[0].path, frames, format="extxyz")
    assert gen.run_trajectory(plans[0]) == 3
    out = tmp_path / "peo.extxyz.xz"
    assert gen.merge_parts(tmp_path / "parts", out) == 3
    np.testing.assert_allclose(datasets.read(out)[2].get_forces(), frames[2].get_forces(), atol=1e-7)
    # resume from the merged file alone (parts lost)
    for p in (tmp_path / "parts").glob("*"):
        p.unlink()
    (tmp_path / "parts").rmdir()
    gen._recover_parts(out, tmp_path / "parts")
    assert len(datasets.read(tmp_path / "parts" / "t00.extxyz")) == 3
    # the script runs standalone (no installed package needed)
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "datasets" / "generate.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--trajectories" in proc.stdout


def test_generator_adds_trajectories_with_new_ids_and_seeds(tmp_path):
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    old = gen.plan_trajectories("peo", 8, [300.0], 4, 3, tmp_path)
    new = gen.plan_trajectories("peo", 6, [300.0], 3, 3, tmp_path, first_trajectory=4)
    assert [p.index for p in new] == [4, 5, 6]
    assert not {p.seed for p in old} & {p.seed for p in new}
    assert {p.path for p in old}.isdisjoint({p.path for p in new})
    with pytest.raises(ValueError, match="first_trajectory"):
        gen.plan_trajectories("peo", 6, [300.0], 3, 3, tmp_path, first_trajectory=-1)


def test_relabel_gives_fresh_single_points_and_resumes(tmp_path):
    """Two stored peo frames with perturbed labels are relabelled by fresh single points; metadata
    and positions are kept; a second run finds the work done and recomputes nothing."""
    pytest.importorskip("tblite.ase")
    from fastfeat.train.datasets import relabel

    frames = []
    for atoms in datasets.load("peo", split="all")[:2]:
        a = atoms.copy()
        a.calc = SinglePointCalculator(a, energy=0.0, forces=atoms.get_forces() + 0.5)
        a.info.pop("label", None)
        frames.append(a)
    src = tmp_path / "in.extxyz"
    write(src, frames, format="extxyz")
    out = tmp_path / "out.extxyz.xz"
    assert relabel.relabel(src, out, workers=1) == 2
    got = datasets.read(out)
    ref = datasets.load("peo", split="all")[:2]
    for a, b in zip(got, ref):
        assert a.info["label"] == datasets.LABEL and a.info["step"] == b.info["step"]
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-4)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-5)
    part = next((tmp_path / "out.extxyz.xz.relabel").glob("t*.extxyz"))
    stamp = part.stat().st_mtime_ns
    assert relabel.relabel(src, out, workers=1) == 2
    assert part.stat().st_mtime_ns == stamp  # resumed: nothing appended
    with pytest.raises(ValueError, match="`source` must be an existing file"):
        relabel.relabel(tmp_path / "missing.extxyz", out)


@pytest.mark.parametrize("k, sizes", [(2, (1, 0, 1)), (3, (1, 1, 1)), (10, (7, 1, 2)), (36, (24, 3, 9)),
                                      (64, (43, 5, 16))])
def test_split_sizes_follow_the_documented_rule(k, sizes):
    from ase import Atoms

    frames = []
    for t in range(k):
        a = Atoms("H")
        a.info["trajectory"] = 100 + 3 * t
        frames.append(a)
    split = datasets.split_trajectories(frames)
    assert tuple(len(split[s]) for s in ("train", "val", "test")) == sizes
    # the newest trajectories are the test set, the ones before them validation
    assert split["test"] == [100 + 3 * t for t in range(k - sizes[2], k)]
    assert split["val"] == [100 + 3 * t for t in range(sizes[0], sizes[0] + sizes[1])]


@pytest.mark.parametrize("limit, stored", [(0.5, 2), (3.0, 0)])
def test_generator_ends_a_trajectory_below_the_minimum_distance(tmp_path, monkeypatch, limit, stored):
    """A frame closer than MIN_PAIR_DISTANCE (li4p2o7 once formed an O-O bond of 1.24 Å) is not
    stored: the trajectory ends there. A cheap EMT copper crystal stands in for tblite."""
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    from ase.build import bulk
    from ase.calculators.emt import EMT

    monkeypatch.setattr(gen.builders, "build", lambda system, rng: bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    monkeypatch.setattr(gen, "_calculator", EMT)
    monkeypatch.setitem(gen.builders.MIN_PAIR_DISTANCE, "peo", limit)  # Cu-Cu is 2.55 Å
    (plan,) = gen.plan_trajectories("peo", 2, [300.0], 1, 2, tmp_path / "parts", relax_steps=2)
    (tmp_path / "parts").mkdir()
    assert gen.run_trajectory(plan) == stored
    assert len(datasets.read(plan.path)) == stored if plan.path.exists() else stored == 0


def test_a_trajectory_ended_at_a_close_pair_stays_ended(tmp_path, monkeypatch, capsys, caplog):
    """The end is recorded in the last stored frame (info "ended"): a resume does not run the trajectory on
    (it used to, and the report called it INCOMPLETE and advised the same command again), and the report
    names the ended trajectory instead."""
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    from ase.build import bulk
    from ase.calculators.emt import EMT

    monkeypatch.setattr(gen.builders, "build", lambda system, rng: bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    monkeypatch.setattr(gen, "_calculator", EMT)
    closest = iter([2.5, 2.5, 0.3])
    monkeypatch.setattr(gen.builders, "min_pair_distance", lambda atoms: next(closest))
    parts = tmp_path / "x.extxyz.parts"
    (plan,) = gen.plan_trajectories("peo", 5, [300.0], 1, 2, parts, relax_steps=2)
    parts.mkdir()
    assert gen.run_trajectory(plan) == 2
    frames = datasets.read(plan.path)
    assert [a.info.get("ended") for a in frames[:-1]] == [None]
    assert frames[-1].info["ended"].startswith("closest pair 0.300 A < 0.90 A (MIN_PAIR_DISTANCE) at step 6")
    assert frames[-1].info["step"] == 4 and frames[-1].info["trajectory"] == 0  # the rest of the frame kept
    monkeypatch.setattr(gen, "_calculator", lambda: pytest.fail("an ended trajectory was run on"))
    assert gen.run_trajectory(plan) == 2
    assert gen.generate("peo", tmp_path / "x.extxyz", n_frames=5, temperatures=[300.0], n_trajectories=1,
                        stride=2, relax_steps=2, stream=sys.stderr) == 2
    err = capsys.readouterr().err
    assert "0 of 1 trajectories to run" in err and "1 ended early" in err, err
    assert "t00 ended for good after 2 frames: closest pair 0.300 A" in err and "INCOMPLETE" not in err, err
    # too little time left to start: a warning says so (the run's summary pointed at warnings that were not there)
    plan2 = gen.plan_trajectories("peo", 5, [300.0], 1, 2, parts, relax_steps=2, first_trajectory=1)[0]
    with caplog.at_level("WARNING"):
        assert gen.run_trajectory(plan2, deadline=time.time() + 30) == 0
    assert re.search(r"t01: not started: (29|30) s were left before the time limit, under the 60 s", caplog.text)


@pytest.mark.parametrize("args, expected", [
    (["--temperatures", "-300"], "`--temperatures` must be finite temperatures > 0 K, got -300.0"),
    (["--temperatures", "300", "nan"], "`--temperatures` must be finite temperatures > 0 K, got nan"),
    (["--frames", "0"], "`--frames` must be an int >= 1, got 0"),
    (["--trajectories", "0"], "`--trajectories` must be an int >= 1, got 0"),
    (["--stride", "0"], "`--stride` must be an int >= 1, got 0"),
    (["--workers", "0"], "`--workers` must be an int >= 1, got 0"),
    (["--relax-steps", "-1"], "`--relax-steps` must be an int >= 0, got -1"),
    (["--time-limit", "-5"], "`--time-limit` must be a number of seconds >= 0"),
    (["--time-limit", "30"], "time limit of 30 s is under 60 s"),
])
def test_generate_refuses_bad_settings_up_front(tmp_path, capsys, args, expected):
    """Bad settings: exit 2 with the option and value named, no traceback, nothing created, no tblite run
    (a negative temperature used to run, give NaN momenta and "wrote 0 frames" with exit 0)."""
    from fastfeat.cli import main as cli

    out = tmp_path / "sub" / "x.extxyz"
    assert cli(["data", "generate", "peo", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfeat data generate: error: ") and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "sub").exists()


def test_generate_api_validates_and_zero_frames_is_an_error(tmp_path, capsys, monkeypatch):
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    with pytest.raises(ValueError, match=r"`temperatures` must be finite temperatures > 0 K, got -300"):
        gen.generate("peo", tmp_path / "x.extxyz", temperatures=[-300.0])
    with pytest.raises(ValueError, match=r"`n_frames` must be an int >= 1, got 0"):
        gen.generate("peo", tmp_path / "x.extxyz", n_frames=0)
    with pytest.raises(ValueError, match=r"time limit of 10 s is under 60 s.*nothing was run"):
        gen.generate("peo", tmp_path / "x.extxyz", time_limit=10)
    assert not list(tmp_path.iterdir())
    # no frame stored: no (empty) output file, and the command exits non-zero saying so
    (tmp_path / "parts").mkdir()
    assert gen.merge_parts(tmp_path / "parts", tmp_path / "x.extxyz") == 0
    assert not (tmp_path / "x.extxyz").exists()
    monkeypatch.setattr(gen, "generate", lambda *args, **kwargs: 0)
    assert gen.main(["peo", "--out", str(tmp_path / "x.extxyz")]) == 1
    assert "no frame was written" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "relabel"])
def test_data_commands_without_tblite_say_how_to_install_it(tmp_path, capsys, monkeypatch, command):
    """Without the [data] extra the workers failed one by one ("No module named 'tblite'") and left a parts folder;
    now one line says what to install, exit 2, nothing created (after the settings and files are checked, so
    their errors come first); --help still works."""
    import importlib.util

    from fastfeat.cli import main as cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tblite" else real(name, *a))
    src = tmp_path / "in.extxyz"
    write(src, [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])], format="extxyz")
    args = ["peo"] if command == "generate" else [str(src)]
    monkeypatch.chdir(tmp_path)
    assert cli(["data", command, *args, "--out", "x.extxyz"]) == 2
    err = capsys.readouterr().err
    assert f'fastfeat data {command}: error: needs tblite (GFN1-xTB): pip install "fastfeat[data]"' in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]
    with pytest.raises(SystemExit) as exc:
        cli(["data", command, "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("command", ["generate", "relabel"])
def test_data_commands_refuse_an_output_that_would_not_read_back(tmp_path, capsys, monkeypatch, command):
    """`--out g0.traj` ran minutes of xTB and wrote extxyz text that ASE then read as a .traj file (and failed);
    the name is now checked before anything runs or is created, with the option named."""
    from fastfeat.cli import main as cli
    from fastfeat.train.datasets import relabel

    src = tmp_path / "in.extxyz"
    write(src, [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])], format="extxyz")
    monkeypatch.chdir(tmp_path)
    args = ["peo"] if command == "generate" else [str(src)]
    for name in ("g0.traj", "g0.extxyz.gz", "g0", "g0.xz"):  # .xz (lzma) is what these writers compress
        assert cli(["data", command, *args, "--out", name]) == 2
        err = capsys.readouterr().err
        assert f"error: `--out` '{name}' must end in .extxyz or .xyz (optionally followed by .xz)" in err, err
        assert "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]
    with pytest.raises(ValueError, match=r"`out` '.*x\.traj' must end in .extxyz or .xyz"):
        relabel.relabel(src, tmp_path / "x.traj")


def test_generate_interrupted_says_what_is_kept_and_how_to_continue(tmp_path, monkeypatch):
    """Ctrl-C during the workers printed only "fastfeat data: interrupted"; the run now says that the stored frames
    stay in the parts folder and that the same command continues, and the interrupt still ends the command."""
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    pytest.importorskip("tblite")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_run_pool", interrupted)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        gen.generate("peo", tmp_path / "x.extxyz", n_frames=2, n_trajectories=1, stream=stream)
    text = stream.getvalue()
    assert "[peo] interrupted: the frames stored so far (0 by the last progress report) stay in " in text, text
    assert "x.extxyz.parts'; the same command again continues from them" in text, text


def test_relabel_bad_source_is_a_clear_error(tmp_path, capsys):
    from fastfeat.cli import main as cli
    from fastfeat.train.datasets import relabel

    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.extxyz").write_text("not a structure\n")
    out = str(tmp_path / "out.extxyz")
    for name, expected in [("missing.extxyz", "does not exist"), ("empty.extxyz", "is empty"),
                           ("folder", "is a folder"), ("notes.extxyz", "cannot read")]:
        assert cli(["data", "relabel", str(tmp_path / name), "--out", out]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("fastfeat data relabel: error: `source` file") or "`source` file" in err, err
        assert expected in err and name in err and "Traceback" not in err, err
    # the generator's checks, with the command's option names (as `fastfeat data generate`)
    assert cli(["data", "relabel", str(tmp_path / "empty.extxyz"), "--out", out, "--workers", "0"]) == 2
    assert "`--workers` must be an int >= 1, got 0" in capsys.readouterr().err
    assert cli(["data", "relabel", str(tmp_path / "empty.extxyz"), "--out", out, "--time-limit", "-5"]) == 2
    assert "`--time-limit` must be a number of seconds >= 0 (0: no limit), got -5.0" in capsys.readouterr().err
    with pytest.raises(TypeError, match="`workers` must be an int, got float 2.0"):
        relabel.relabel(tmp_path / "empty.extxyz", out, workers=2.0)
    with pytest.raises(ValueError, match="empty.extxyz' is empty"):
        relabel.relabel(tmp_path / "empty.extxyz", out)
    assert not os.path.exists(out)


def test_data_usage_marks_optional_options(capsys):
    from fastfeat.cli import main as cli

    assert cli(["data", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("[--frames N]", "[--temperatures T [T ...]]", "[--trajectories K]", "[--stride S]",
                "[--time-limit SECONDS]"):
        assert opt in out, out
    assert "generate NAME --out FILE" in out


def test_read_explicit_energy_key_must_exist(tmp_path):
    """A misspelt `energy_key` is an error naming the key and the file; the default "energy" stays optional."""
    path = tmp_path / "mine.extxyz"
    frames = [a for a, _f, _e in _custom_key_frames()]
    write(path, frames, format="extxyz")
    for kw in ({}, {"index": 1}):
        with pytest.raises(ValueError) as err:
            datasets.read(path, forces_key="REF_forces", energy_key="REF_energi", **kw)
        msg = str(err.value)
        assert "`energy_key` 'REF_energi'" in msg and "mine.extxyz" in msg and "REF_energy" in msg, msg
    # default key: optional, frames simply carry no energy
    got = datasets.read(path, forces_key="REF_forces")
    assert len(got) == 3 and all("energy" not in a.calc.results for a in got)
    # an explicit key found in only some frames is fine
    frames[0].info.pop("REF_energy")
    write(path, frames, format="extxyz")
    got = datasets.read(path, forces_key="REF_forces", energy_key="REF_energy")
    assert "energy" not in got[0].calc.results
    assert got[1].get_potential_energy() == pytest.approx(frames[1].info["REF_energy"])
    with pytest.raises(TypeError, match="`energy_key`"):
        datasets.read(path, forces_key="REF_forces", energy_key=1)


def test_data_list_help_and_arguments(capsys):
    from fastfeat.cli import main as cli

    # --help describes the command instead of listing the data (which loads every bundled set)
    assert cli(["data", "list", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastfeat data list") and "frame and trajectory counts" in out and "peo:" not in out
    assert cli(["data", "list", "peo"]) == 2
    assert "takes no arguments, got peo" in capsys.readouterr().err


def _peo_frames(n=2):
    """Stored peo frames of one trajectory (system, seed, temperature, trajectory, step info)."""
    frames = datasets.load("peo", split="all")
    k = frames[0].info["trajectory"]
    return [a for a in frames if a.info["trajectory"] == k][:n]


def test_generate_refuses_output_of_other_settings(tmp_path, capsys):
    """Stored frames made with another system, seed or temperature than planned for their trajectory are not
    continued (li4p2o7-water used to append to peo atoms): exit 2 naming `--out`/the part file, nothing run."""
    from fastfeat.cli import main as cli

    frames = _peo_frames()
    info = frames[0].info
    k, seed, temp = int(info["trajectory"]), int(info["seed"]), float(info["temperature"])
    base = ["--frames", "3", "--trajectories", "1", "--stride", "1", "--relax-steps", "0", "--workers", "1",
            "--first-trajectory", str(k)]
    out = tmp_path / "b.extxyz"
    write(out, frames, format="extxyz")
    good_seed = str((seed - k) // 1000)
    assert 1000 * int(good_seed) + k == seed
    for system, seed_arg, t, expected in [
        ("li4p2o7-water", good_seed, temp, "system='peo'"),
        ("peo", str(int(good_seed) + 1), temp, f"seed={seed},"),
        ("peo", good_seed, temp + 100, f"temperature={temp:g} K"),
    ]:
        argv = [system, *base, "--seed", seed_arg, "--temperatures", f"{t:g}", "--out", str(out)]
        assert cli(["data", "generate", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "`--out` file" in err and "b.extxyz" in err and expected in err and "Traceback" not in err, err
        assert not (tmp_path / "b.extxyz.parts").exists()
    # the same check on part files (a resume with the parts present), named by path
    parts = tmp_path / "b.extxyz.parts"
    parts.mkdir()
    write(parts / f"t{k:02d}.extxyz", frames, format="extxyz")
    assert cli(["data", "generate", "li4p2o7-water", "--seed", good_seed, *base, "--temperatures", f"{temp:g}",
                "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "part file" in err and f"t{k:02d}.extxyz" in err and "system='peo'" in err, err
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    (plan,) = gen.plan_trajectories("peo", 3, [temp + 1], 1, 1, parts, seed=int(good_seed), first_trajectory=k)
    with pytest.raises(ValueError, match="part file"):
        gen.run_trajectory(plan)


def test_generate_refuses_foreign_or_broken_files(tmp_path, capsys):
    """An --out that generate did not write (no `trajectory` info) or an unreadable part file: exit 2, no
    traceback, nothing created (it used to give a KeyError and leave an empty .parts folder)."""
    from ase.build import molecule
    from fastfeat.cli import main as cli

    args = ["peo", "--frames", "2", "--trajectories", "1", "--stride", "1", "--relax-steps", "0", "--workers", "1"]
    out = tmp_path / "user.extxyz"
    write(out, molecule("H2O"), format="extxyz")
    assert cli(["data", "generate", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "`--out`" in err and "user.extxyz" in err and "not written by `fastfeat data generate`" in err, err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["user.extxyz"]
    (tmp_path / "text.extxyz").write_text("not a structure\nat all\n")
    assert cli(["data", "generate", *args, "--out", str(tmp_path / "text.extxyz")]) == 2
    err = capsys.readouterr().err
    assert "text.extxyz" in err and "cannot be read as extxyz" in err, err
    parts = tmp_path / "p"
    parts.mkdir()
    write(parts / "t00.extxyz", _peo_frames(1), format="extxyz")
    full = (parts / "t00.extxyz").read_text()
    (parts / "t00.extxyz").write_text(full[: len(full) // 2])  # truncated mid-frame
    assert cli(["data", "generate", *args, "--out", str(tmp_path / "x.extxyz"), "--parts", str(parts)]) == 2
    err = capsys.readouterr().err
    assert "part file" in err and "t00.extxyz" in err and "cannot be read" in err, err
    assert not (tmp_path / "x.extxyz").exists()
    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    with pytest.raises(ValueError, match="not written by `fastfeat data generate`"):
        gen._recover_parts(out, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_generate_refuses_a_negative_seed_up_front(tmp_path, capsys):
    from fastfeat.cli import main as cli

    gen = pytest.importorskip("fastfeat.train.datasets.generate")
    out = tmp_path / "sub" / "x.extxyz"
    assert cli(["data", "generate", "peo", "--out", str(out), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "`--seed` must be an int >= 0, got -1" in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="`seed` must be an int >= 0, got -3"):
        gen.generate("peo", out, seed=-3)
    assert not (tmp_path / "sub").exists()


class _InProcessPool:
    """Stands in for the spawn pool, so monkeypatched single points reach the work."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)


def _fake_relabel(monkeypatch, fail_steps=()):
    import multiprocessing
    import types

    from fastfeat.train.datasets import relabel

    calls = []

    def label(atoms):
        calls.append(atoms.info.get("step"))
        if atoms.info.get("step") in fail_steps:
            raise RuntimeError("SCF did not converge")
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=1.0, forces=np.zeros((len(atoms), 3)))
        frame.info["label"] = relabel.LABEL
        return frame

    monkeypatch.setattr(relabel, "label_frame", label)
    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: types.SimpleNamespace(Pool=_InProcessPool))
    return relabel, calls


def test_relabel_resumes_after_failed_frames_and_reports_them(tmp_path, monkeypatch):
    """A failed frame counts as done on resume (it used to shift the index: steps [1, 2, 2, 3, 4], "5 of 5")."""
    import io

    relabel, calls = _fake_relabel(monkeypatch, fail_steps={3})
    frames = []
    for step in range(1, 6):
        a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74 + 0.01 * step]])
        a.info.update(trajectory=0, step=step)
        frames.append(a)
    src = tmp_path / "in.extxyz"
    write(src, frames, format="extxyz")
    parts = tmp_path / "out.extxyz.relabel"
    out = tmp_path / "out.extxyz"
    # an interrupted run: steps 1-2 stored, 3 failed
    path = parts / "t00.extxyz"
    parts.mkdir()
    from ase.io import read

    relabel._relabel_part((read(src, ":")[:3], path, np.inf))
    assert calls == [1, 2, 3] and (parts / "t00.failed").exists()
    (parts / relabel.MANIFEST).write_text(json.dumps(relabel._source_record(src)))
    stream = io.StringIO()
    assert relabel.relabel(src, out, workers=1, stream=stream) == 4
    assert calls == [1, 2, 3, 4, 5]
    assert [a.info["step"] for a in datasets.read(out)] == [1, 2, 4, 5]
    assert "wrote 4 of 5 frames" in stream.getvalue() and "1 failed" in stream.getvalue(), stream.getvalue()


def test_relabel_refuses_a_folder_of_another_source(tmp_path, monkeypatch, capsys):
    from fastfeat.cli import main as cli

    relabel, calls = _fake_relabel(monkeypatch)
    a_src, b_src = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    write(a_src, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])], format="extxyz")
    write(b_src, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.80]])], format="extxyz")
    out = tmp_path / "out.extxyz"
    assert relabel.relabel(a_src, out, workers=1) == 1
    assert cli(["data", "relabel", str(b_src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "out.extxyz.relabel" in err and "another source" in err and "a.extxyz" in err, err
    assert len(calls) == 1
    # a folder with work but no record (an older run or another tool): refused too
    (tmp_path / "out.extxyz.relabel" / relabel.MANIFEST).unlink()
    with pytest.raises(ValueError, match="unknown source"):
        relabel.relabel(a_src, out, workers=1)


def test_relabel_frames_without_trajectory_or_step(tmp_path, monkeypatch):
    """Frames without `trajectory`/`step` info are one trajectory, merged in source order (it used to be a
    KeyError in merge_parts)."""
    relabel, calls = _fake_relabel(monkeypatch)
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.70 + 0.02 * i]]) for i in range(3)]
    src = tmp_path / "plain.extxyz"
    write(src, frames, format="extxyz")
    out = tmp_path / "out.extxyz"
    assert relabel.relabel(src, out, workers=1) == 3
    got = datasets.read(out)
    assert [round(a.positions[1, 2], 2) for a in got] == [0.70, 0.72, 0.74]
    assert all("trajectory" not in a.info for a in got)
