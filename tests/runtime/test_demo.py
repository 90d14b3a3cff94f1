"""fastfeat demo on a test model and a small test split."""

from __future__ import annotations

import json

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from fastfeat.runtime import demo
from fastfeat.runtime.demo import force_metrics

from conftest import random_water_box


def test_force_metrics_known_values():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    pred = 1.1 * ref
    m = force_metrics(pred, ref, ["H", "O"])
    np.testing.assert_allclose(m["mae"], (0.1 + 0.2) / 6)
    np.testing.assert_allclose(m["relative_rmse"], 0.1)
    np.testing.assert_allclose(m["cosine"], 1.0)
    np.testing.assert_allclose(m["mae_per_element"]["O"], 0.2 / 3)
    m = force_metrics(-ref, ref)
    np.testing.assert_allclose(m["cosine"], -1.0)


def test_demo_end_to_end(model, model_path, tmp_path):
    frames = []
    for s in range(4):
        atoms = random_water_box(seed=20 + s)
        atoms.calc = SinglePointCalculator(atoms, forces=model.forces(atoms) / 1.25)
        frames.append(atoms)
    data = tmp_path / "test.extxyz"
    ase.io.write(data, frames)
    out = tmp_path / "demo"
    rc = demo.main(["--model", str(model_path), "--data", str(data), "--steps", "60", "--out", str(out),
                    "--device", "cpu", "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["accuracy"]
    assert acc["n_frames"] == 4 and acc["n_atoms"] == 96
    np.testing.assert_allclose(acc["relative_rmse"], 0.25, rtol=1e-4)
    np.testing.assert_allclose(acc["cosine"], 1.0, rtol=1e-6)
    assert summary["md"]["steps"] == 60 and summary["md"]["atom_steps_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "relative RMSE" in report and "ns/day" in report and "λ" in report
    # a file is not a test split: the report says so, and does not call the figure a test error
    assert summary["accuracy_scope"] == "file" and "## Accuracy on the given data" in report
    assert "Not a test split" in report and "test split" not in report.replace("Not a test split", "")
    # the speed comes with the machine it was measured on
    assert summary["md"]["machine"] in report and "Numba threads" in summary["md"]["machine"]
    for name in ("parity.png", "temperature.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(ase.io.read(out / "md.extxyz", index=":")) >= 2
    # the test model holds no training ranges: the report says the count is unknown
    assert summary["md"]["extrapolating_end"] is None and "not known (the model file holds no ranges)" in report


def test_demo_reports_extrapolation_of_the_last_frame(model, model_path, spec, tmp_path):
    """With training ranges from one box, MD of another (random forces) ends outside them: counted, and the
    report names the worst atom; the count is ForceModel.extrapolation of the last frame."""
    import fastfeat
    from _models import with_metadata

    from fastfeat.runtime import ForceModel
    from fastfeat.runtime.extrapolation import feature_range_metadata

    f = fastfeat.featurize(random_water_box(seed=20), spec, dtype=np.float32)
    ranged = with_metadata(model_path, tmp_path / "ranged.onnx",
                           feature_range=feature_range_metadata(spec, np.asarray(f.invariant), np.asarray(f.species)))
    frames = [random_water_box(seed=21)]
    frames[0].calc = SinglePointCalculator(frames[0], forces=model.forces(frames[0]))
    ase.io.write(tmp_path / "test.extxyz", frames)
    out = tmp_path / "demo"
    assert demo.main(["--model", str(ranged), "--data", str(tmp_path / "test.extxyz"), "--steps", "20", "--out",
                      str(out), "--device", "cpu", "--quiet"]) == 0
    md = json.loads((out / "summary.json").read_text())["md"]
    last = ase.io.read(out / "md.extxyz", index=-1)
    assert md["extrapolating_end"] == len(ForceModel.load(ranged).extrapolation(last).atoms) > 0
    assert f"The last frame extrapolates: {md['extrapolation_end']}" in (out / "report.md").read_text()


def test_demo_errors(model_path, tmp_path, capsys):
    assert demo.main(["--model", str(model_path), "--out", str(tmp_path / "d"), "--device", "cpu", "--quiet"]) == 2
    assert "`--data` is required" in capsys.readouterr().err
    assert demo.main(["--model", "no-such-model", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "no bundled model named 'no-such-model'" in capsys.readouterr().err
    # a folder the failed call made is gone again (here: the model, or CUDA on a machine without it, failed);
    # one that existed before stays
    assert not (tmp_path / "d").exists()
    (tmp_path / "mine").mkdir()
    assert demo.main(["--model", "no-such-model", "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert (tmp_path / "mine").is_dir()


def test_demo_unwritable_out_fails_first(model_path, tmp_path, capsys):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = "/sys/fastfeat-demo" if os.access(ro, os.W_OK) else str(ro / "demo")
    assert demo.main(["--model", str(model_path), "--data", "x.extxyz", "--out", target, "--quiet"]) == 2
    assert "cannot write to `--out`" in capsys.readouterr().err
    # a file where the folder goes: "File exists" named nothing
    report = tmp_path / "report.md"
    report.write_text("mine\n")
    assert demo.main(["--model", str(model_path), "--data", "x.extxyz", "--out", str(report), "--quiet"]) == 2
    assert "report.md' is a file: it names the folder the report is written into" in capsys.readouterr().err
    assert report.read_text() == "mine\n"


def test_demo_max_frames_validated(model_path, tmp_path, capsys):
    for bad in ("0", "-2"):
        rc = demo.main(["--model", str(model_path), "--data", "x.extxyz", "--max-frames", bad,
                        "--out", str(tmp_path / "d"), "--device", "cpu", "--quiet"])
        assert rc == 2
        assert f"fastfeat demo: error: `--max-frames` must be >= 1 (test frames used for accuracy), got {bad}" \
            in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_demo_md_options_validated_first(model_path, tmp_path, capsys):
    """--steps, --dt, --temperature, --friction and --seed were checked by run_md after the model loaded and the
    accuracy ran, under their Python names; --steps 0 wrote a report with 0 steps/s and a wrong extrapolation line."""
    for opts, match in ((["--steps", "0"], "`--steps` must be an int >= 1"), (["--dt", "0"], "`--dt` must be a finite"),
                        (["--temperature", "-1"], "`--temperature` must be a finite number >= 0"),
                        (["--friction", "0"], "`--friction` must be a finite number > 0"),
                        (["--seed", "-1"], "`--seed` must be an int >= 0")):
        rc = demo.main(["--model", str(model_path), "--data", "x.extxyz", *opts, "--out", str(tmp_path / "d"),
                        "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and match in err, (opts, err)
    assert not (tmp_path / "d").exists()


def test_demo_rerun_without_plots_removes_old_plots(model, model_path, tmp_path, monkeypatch):
    """A second demo into the same folder without matplotlib left the first run's plots beside its report."""
    atoms = random_water_box(seed=3)
    atoms.calc = SinglePointCalculator(atoms, forces=model.forces(atoms))
    data = tmp_path / "t.extxyz"
    ase.io.write(data, [atoms])
    out = tmp_path / "demo"
    args = ["--model", str(model_path), "--data", str(data), "--steps", "20", "--out", str(out), "--device", "cpu",
            "--quiet"]
    assert demo.main(args) == 0 and (out / "parity.png").exists()
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert demo.main(args) == 0
    assert not (out / "parity.png").exists() and not (out / "temperature.png").exists()
    assert json.loads((out / "summary.json").read_text())["plots"] == []


def test_demo_refuses_non_force_model(dipole_model_path, tmp_path, capsys):
    rc = demo.main(["--model", str(dipole_model_path), "--data", "x.extxyz", "--out", str(tmp_path / "d"),
                    "--device", "cpu", "--quiet"])
    assert rc == 2
    assert "predicts 'dipole', not forces" in capsys.readouterr().err
