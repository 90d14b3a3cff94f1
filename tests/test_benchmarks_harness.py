"""The report machinery of benchmarks/compare (run_all, _harness) on small fake results: no peer runs.

- ``--only`` refuses to merge into results of another thread count (exit 2),
- the report says which comparisons are pending while a run is in progress, and not after it,
- the ≥ / ≤ of a target comes from the ratio's stored ``higher_is_better``,
- the git commit and the tree state are recorded (run and comparison) and printed,
- a script's error (agreement check, contender that raised) makes the comparison FAILED with its rows kept.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import types

import numpy as np
import pytest

from benchmarks.compare import _harness, run_all


def _machine(**extra):
    m = {"cpu": "Fake CPU", "logical_cpus": 1, "memory_gib": 1.0, "platform": "Linux", "python": "3.x",
         "versions": {"numpy": "1"}, "threads": {}, "date_utc": "2026-01-02 03:04:05"}
    m.update(extra)
    return m


def _result(name, date="2026-01-02 03:04:05", commit="abc1234", dirty=False, ratios=None):
    return {"name": name, "title": f"title of {name}", "rows": [], "notes": [f"note of {name}"],
            "ratios": ratios if ratios is not None else
            [_harness.ratio("speed-up", "water 3", 3, 1.0, 2.0, target=1.5)],
            "machine": _machine(date_utc=date, commit=commit, dirty=dirty), "threads": 1, "quick": True}


def _data(comparisons, **extra):
    data = {"comparisons": comparisons, "machine": _machine(commit="abc1234", dirty=False), "threads": 1,
            "date_utc": "2026-01-02 03:04"}
    data.update(extra)
    return data


@pytest.fixture
def fake_runs(monkeypatch):
    """run_all.run_one replaced: records the report on disk at each call, returns a fake result."""
    seen = []

    def fake_run_one(name, quick, threads, timeout, logfh, *, out_dir):
        md = (out_dir / ("compare_quick.md" if quick else "compare.md")).read_text()
        seen.append((name, md))
        return _result(name)

    def install(out_dir, fail_on=None):
        def run_one(name, quick, threads, timeout, logfh):
            if name == fail_on:
                raise KeyboardInterrupt
            return fake_run_one(name, quick, threads, timeout, logfh, out_dir=out_dir)

        monkeypatch.setattr(run_all, "run_one", run_one)
        monkeypatch.setattr(run_all, "write_plot", lambda data, path: False)
        return seen

    return install


# ------------------------------------------------------------------------- 4: thread counts
def test_only_with_other_thread_count_is_refused(tmp_path, monkeypatch, capsys):
    stored = _data({"neighbors": _result("neighbors"), "torchani": _result("torchani")}, threads=2)
    (tmp_path / "compare_quick.json").write_text(json.dumps(stored))
    monkeypatch.setattr(run_all, "run_one", lambda *a, **k: pytest.fail("nothing may run"))
    rc = run_all.main(["--quick", "--only", "neighbors", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--threads 2" in err and "--threads 1" in err and "--out" in err
    assert json.loads((tmp_path / "compare_quick.json").read_text()) == stored  # untouched


def test_only_with_same_thread_count_merges(tmp_path, fake_runs):
    stored = _data({"neighbors": _result("neighbors", date="2025-01-01 00:00:00", commit="old0001"),
                    "dscribe": _result("dscribe", date="2025-01-01 00:00:00", commit="old0001")})
    (tmp_path / "compare_quick.json").write_text(json.dumps(stored))
    fake_runs(tmp_path)
    assert run_all.main(["--quick", "--only", "torchani", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "compare_quick.json").read_text())
    assert list(data["comparisons"]) == ["neighbors", "torchani", "dscribe"]  # run order, old ones kept
    md = (tmp_path / "compare_quick.md").read_text()
    # the comparisons come from two runs: the summary says the span and has a column per comparison
    assert "Measured (UTC) 2025-01-01 00:00:00 to 2026-01-02 03:04:05" in md
    assert "| comparison | measured (UTC) |" in md
    assert "| neighbors | 2025-01-01 00:00, commit old0001 |" in md


# ------------------------------------------------------------------------------ 5: pending
def test_pending_marker_during_run_and_removed_after(tmp_path, fake_runs):
    seen = fake_runs(tmp_path)
    assert run_all.main(["--quick", "--only", "neighbors,torchani", "--out", str(tmp_path)]) == 0
    (first, md1), (second, md2) = seen
    assert (first, second) == ("neighbors", "torchani")
    assert md1.splitlines()[0].startswith("**Run in progress: pending neighbors, torchani**")
    assert md2.splitlines()[0].startswith("**Run in progress: pending torchani**")
    final = (tmp_path / "compare_quick.md").read_text()
    assert "Run in progress" not in final and "*Pending" not in final
    assert "pending" not in json.loads((tmp_path / "compare_quick.json").read_text())


def test_interrupted_run_says_what_was_not_run(tmp_path, fake_runs):
    fake_runs(tmp_path, fail_on="torchani")
    with pytest.raises(KeyboardInterrupt):
        run_all.main(["--quick", "--only", "neighbors,torchani", "--out", str(tmp_path)])
    md = (tmp_path / "compare_quick.md").read_text()
    assert md.splitlines()[0].startswith("**Run interrupted: pending torchani**")
    assert json.loads((tmp_path / "compare_quick.json").read_text())["pending"] == ["torchani"]


# --------------------------------------------------------------------------- 7: ≥ / ≤ shown
def _summary_row(md, what):
    return next(ln for ln in md.splitlines() if ln.startswith("|") and f" {what} |" in ln)


def test_target_direction_comes_from_the_stored_flag(tmp_path):
    assert _harness.ratio("x", "s", 1, 1.0, 2.0, target=1.0)["higher_is_better"] is True
    assert _harness.ratio("x", "s", 1, 1.0, 2.0, target=1.0, higher_is_better=False)["higher_is_better"] is False
    ratios = [
        # words that the old guess read as "lower is better", flag says higher
        _harness.ratio("peak memory saved per atom", "water 3", 3, 1.0, 4.0, target=2.0),
        # a speed-up worded ratio whose flag says lower is better
        _harness.ratio("speed-up ratio capped", "water 3", 3, 1.0, 1.2, target=1.3, higher_is_better=False),
    ]
    old = {"what": "features: time per atom at 100 / at 3", "structure": "water", "n_atoms": 3, "value": 1.1,
           "target": 1.3, "met": True}  # JSON written before the flag: the old guess
    data = _data({"scaling": _result("scaling", ratios=ratios + [old])})
    path = tmp_path / "r.md"
    run_all.write_markdown(data, path, quick=True)
    md = path.read_text()
    assert "| ≥ 2 | yes |" in _summary_row(md, "peak memory saved per atom")
    assert "| ≤ 1.3 | yes |" in _summary_row(md, "speed-up ratio capped")
    assert "| ≤ 1.3 | yes |" in _summary_row(md, "features: time per atom at 100 / at 3")


# ------------------------------------------------------------------------------ 3: provenance
def _fake_git(monkeypatch, status):
    def fake(cmd, **kwargs):
        assert cmd[:2] == ["git", "--no-optional-locks"]  # read-only: no index refresh written
        out = "abc1234\n" if "rev-parse" in cmd else status
        return types.SimpleNamespace(returncode=0, stdout=out, stderr="")

    monkeypatch.setattr(_harness.subprocess, "run", fake)


def test_git_revision_ignores_results_folder(monkeypatch):
    _fake_git(monkeypatch, " M benchmarks/results/compare.json\n?? benchmarks/results/new.png\n")
    assert _harness.git_revision() == {"commit": "abc1234", "dirty": False}
    _fake_git(monkeypatch, " M benchmarks/results/compare.json\n M fastfeat/_features.py\n")
    assert _harness.git_revision() == {"commit": "abc1234", "dirty": True}
    _fake_git(monkeypatch, 'R  benchmarks/results/a.md -> "benchmarks/compare/a b.py"\n')
    assert _harness.git_revision()["dirty"] is True


def test_git_revision_without_repository(tmp_path):
    assert _harness.git_revision(tmp_path) == {"commit": None, "dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_revision_of_this_checkout():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_harness._ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        pytest.skip("not a git checkout")
    info = _harness.git_revision()
    assert info["commit"] == head and info["dirty"] in (True, False)


def test_commit_and_command_recorded_and_printed(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(run_all, "git_revision", lambda root=None: {"commit": "fff0000", "dirty": True})
    fake_runs(tmp_path)
    argv = ["--quick", "--only", "neighbors", "--threads", "1", "--out", str(tmp_path)]
    assert run_all.main(argv) == 0
    data = json.loads((tmp_path / "compare_quick.json").read_text())
    assert data["machine"]["commit"] == "fff0000" and data["machine"]["dirty"] is True
    assert data["command"] == "python -m benchmarks.compare.run_all " + " ".join(argv)
    md = (tmp_path / "compare_quick.md").read_text()
    assert f"Command: `python -m benchmarks.compare.run_all {' '.join(argv)}` (from the repository root), " \
           "at commit fff0000 + uncommitted changes." in md
    # the comparison's own date and commit under its heading (from its own machine block)
    section = md.split("## title of neighbors", 1)[1]
    assert section.lstrip().startswith("Measured 2026-01-02 03:04:05 UTC at commit abc1234")


# ------------------------------------------------------------------ 8: failures reported
def test_run_one_keeps_the_scripts_error_and_rows(tmp_path, monkeypatch):
    def fake_subprocess_run(cmd, **kwargs):
        out = cmd[cmd.index("--json") + 1]
        res = _result("neighbors")
        res["error"] = "pair lists differ from fastfeat's at 99 atoms"
        res["rows"] = [_harness.row("fastfeat", "neighbour list", "water 99", 99,
                                    {"median_s": 1e-3, "min_s": 1e-3, "repeats": 1})]
        with open(out, "w") as fh:
            json.dump(res, fh)
        return types.SimpleNamespace(returncode=1, stdout="", stderr="[neighbors] FAILED: pair lists differ")

    monkeypatch.setattr(run_all.subprocess, "run", fake_subprocess_run)
    with open(tmp_path / "log", "w") as logfh:
        res = run_all.run_one("neighbors", True, 1, 10, logfh)
    assert res["error"].startswith("exit 1 after") and "pair lists differ" in res["error"]
    assert [r["tool"] for r in res["rows"]] == ["fastfeat"] and res["machine"]["commit"] == "abc1234"
    path = tmp_path / "r.md"
    run_all.write_markdown(_data({"neighbors": res}), path, quick=True)
    md = path.read_text()
    assert "| neighbors | FAILED |" in md and "**FAILED**" in md and "| fastfeat | neighbour list |" in md


def test_main_for_exits_nonzero_on_error(tmp_path, capsys):
    def run(quick, threads):
        return {"name": "x", "rows": [], "ratios": [], "notes": [], "error": "contender raised"}

    out = tmp_path / "x.json"
    assert _harness.main_for(run, ["--quick", "--json", str(out)]) == 1
    written = json.loads(out.read_text())
    assert written["error"] == "contender raised" and "commit" in written["machine"]
    assert "FAILED: contender raised" in capsys.readouterr().err


def test_neighbour_pair_sets_compared_not_only_counted():
    from benchmarks.compare.neighbors import pair_set_difference

    i, j = np.array([0, 1, 1]), np.array([1, 0, 0])
    s = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    d = np.array([1.0, 1.0, 2.0])
    perm = np.array([2, 0, 1])
    assert pair_set_difference((i, j, s, d), (i[perm], j[perm], s[perm], d[perm]), 2) is None
    flipped = s.copy()
    flipped[2] = [-1, 0, 0]  # same count, another pair
    assert "keys differ" in pair_set_difference((i, j, s, d), (i, j, flipped, d), 2)
    assert "pairs" in pair_set_difference((i, j, s, d), (i[:2], j[:2], s[:2], d[:2]), 2)
    assert "distances" in pair_set_difference((i, j, s, d), (i, j, s, d + [0, 0, 1e-6]), 2)


def test_dscribe_agreement_is_column_wise():
    from benchmarks.compare.dscribe_acsf import AGREEMENT_TOL, agreement

    theirs = np.array([[1000.0, 1e-3], [500.0, 2e-3]])
    ours = theirs.copy()
    ours[1, 1] *= 1 + 1e-6  # invisible against the largest |G| of the array, not against its column's
    overall, per_column = agreement(ours, theirs)
    assert overall < AGREEMENT_TOL < per_column


def test_lammps_failure_is_an_error(monkeypatch):
    from benchmarks.compare import lammps_md

    def broken(*args, **kwargs):
        raise OSError("libmpi.so.12: cannot open shared object file")

    monkeypatch.setattr(lammps_md, "LammpsSnap", broken)
    monkeypatch.setattr(lammps_md, "fastfeat_md_available", lambda: (False, "test"))
    res = lammps_md.run(quick=True)
    assert "LAMMPS not run: OSError" in res["error"] and "fastfeat side not run" in res["error"]
    assert res["rows"] == [] and res["ratios"] == []
