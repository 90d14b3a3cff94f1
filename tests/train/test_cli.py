"""`fastfeat train` / `fastfeat evaluate` / `fastfeat featurize` and examples/external_onnx.py end to end."""

import json
import os
import re
import subprocess
import sys
import textwrap

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import fastfeat
from fastfeat.cli import main as cli
from fastfeat.train.evaluate import OnnxForceModel

from ._helpers import random_rotation, small_spec
from ._synthetic import covariant_target, synthetic_frames

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_cli")
    ase.io.write(d / "syn.extxyz", synthetic_frames(40, seed=0))
    (d / "spec.json").write_text(small_spec().to_json())
    return d


@pytest.fixture(scope="module")
def trained(workdir):
    """A basis-head model trained on the synthetic covariant target `polar`."""
    out = workdir / "polar.onnx"
    rc = cli(["train", "--data", str(workdir / "syn.extxyz"), "--target", "polar", "--spec", str(workdir / "spec.json"),
              "--head", "basis", "--epochs", "60", "--batch-size", "2", "--threads", "1", "--quiet",
              "--cache-dir", str(workdir / "cache"), "--out", str(out), "--history", str(workdir / "history.json")])
    assert rc == 0
    return out


def test_train_learns_a_synthetic_covariant_target(trained, workdir):
    summary = json.loads((workdir / "history.json").read_text())
    val = summary["metrics"]["val"]
    assert val["rel_rmse"] < 0.2, f"validation relative RMSE {val['rel_rmse']:.3f} (a zero model gives 1.0)"
    assert val["cosine"] > 0.95
    assert summary["onnx_max_rel_deviation"] < 1e-5
    m = OnnxForceModel(trained)
    assert m.target == "polar" and m.metadata["fastfeat.head"] == "basis"
    assert json.loads(m.metadata["fastfeat.validation"])["val"]["rel_rmse"] == pytest.approx(val["rel_rmse"])
    # a fresh structure never seen in training
    atoms = synthetic_frames(1, seed=99)[0]
    f = fastfeat.featurize(atoms, m.spec)
    pred = m(f.invariant, f.covariant, f.species)
    ref = covariant_target(atoms)
    assert np.sqrt(((pred - ref) ** 2).mean()) / np.sqrt((ref**2).mean()) < 0.3


def test_exported_model_holds_the_training_feature_ranges(trained, workdir):
    """`fastfeat.feature_range`: per element, the min and max of every invariant column over the training
    split's atoms (not the validation frames); the runtime reads them back."""
    from fastfeat.runtime import ForceModel
    from fastfeat.train.config import TrainConfig
    from fastfeat.train.data import split_frames

    frames = ase.io.read(workdir / "syn.extxyz", index=":")
    cfg = TrainConfig()
    i_tr, i_va = split_frames(len(frames), cfg.val_fraction, cfg.seed)
    assert len(i_va) > 0
    spec = fastfeat.FeatureSpec.from_json((workdir / "spec.json").read_text())
    f = fastfeat.featurize([frames[i] for i in i_tr], spec, dtype=np.float32)
    g, s = np.asarray(f.invariant), np.asarray(f.species)
    model = ForceModel.load(trained)
    for e, symbol in enumerate(spec.species):
        lo, hi = model.feature_range[symbol]
        np.testing.assert_array_equal(lo, g[s == e].min(0))
        np.testing.assert_array_equal(hi, g[s == e].max(0))
    assert not model.extrapolation(frames[int(i_tr[0])])


def test_exported_model_is_covariant_and_invariant_end_to_end(trained):
    """Rotate/translate/permute a real structure, featurize, run the ONNX model."""
    m = OnnxForceModel(trained)
    atoms = synthetic_frames(1, seed=5)[0]
    atoms.pbc = False  # free rotation of a cluster
    f0 = fastfeat.featurize(atoms, m.spec, dtype=np.float64)
    ref = m(f0.invariant, f0.covariant, f0.species).astype(np.float64)
    scale = np.abs(ref).max()
    rng = np.random.default_rng(21)
    for _ in range(3):
        rot = random_rotation(rng)
        shift = rng.normal(size=3) * 5
        moved = atoms.copy()
        moved.positions = atoms.positions @ rot.T + shift
        f = fastfeat.featurize(moved, m.spec, dtype=np.float64)
        out = m(f.invariant, f.covariant, f.species).astype(np.float64)
        err = np.abs(out - ref @ rot.T).max() / scale
        assert err < 1e-5, f"rotation {rot.tolist()} + translation {shift.tolist()}: rel error {err:.2e}"
    perm = rng.permutation(len(atoms))
    f = fastfeat.featurize(atoms[perm], m.spec, dtype=np.float64)
    out = m(f.invariant, f.covariant, f.species)
    np.testing.assert_allclose(out, ref[perm], rtol=1e-5, atol=1e-6 * scale, err_msg=f"permutation {perm.tolist()}")


def test_evaluate_json_and_plot(trained, workdir, capsys):
    plot = workdir / "parity.png"
    rc = cli(["evaluate", str(trained), str(workdir / "syn.extxyz"), "--json", "--plot", str(plot)])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_structures"] == 40 and metrics["n_atoms"] == 480
    assert set(metrics["per_element"]) == {"H", "O"}
    for key in ("mae", "rmse", "rel_rmse", "cosine"):
        assert np.isfinite(metrics[key])
    assert metrics["rel_rmse"] < 0.2
    assert metrics["rmse"] == pytest.approx(metrics["rel_rmse"] * metrics["ref_rms"])
    assert plot.stat().st_size > 1000
    rc = cli(["evaluate", str(trained), str(workdir / "syn.extxyz")])
    out = capsys.readouterr().out
    assert rc == 0 and "rel RMSE" in out and "\nH " in out and "\nO " in out


def test_featurize_cli_and_external_example(trained, workdir, capsys):
    npz = workdir / "features.npz"
    assert cli(["featurize", str(workdir / "syn.extxyz"), "--model", str(trained), "--out", str(npz)]) == 0
    npz2 = workdir / "features_spec.npz"
    assert cli(["featurize", str(workdir / "syn.extxyz"), "--spec", str(workdir / "spec.json"), "--out", str(npz2)]) == 0
    capsys.readouterr()
    with np.load(npz) as z, np.load(npz2) as z2:
        assert z["invariant"].shape == (480, small_spec().n_invariant)
        assert z["covariant"].shape == (480, small_spec().n_covariant, 3)
        assert z["species"].dtype == np.int64 and z["offsets"].tolist()[-1] == 480
        np.testing.assert_array_equal(z["invariant"], z2["invariant"])
        assert fastfeat.FeatureSpec.from_json(str(z["spec"])) == small_spec()
        feats = {k: z[k] for k in z.files}
    forces_path = workdir / "forces.npy"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "external_onnx.py"), str(trained), str(npz),
                           "--out", str(forces_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "structure 39: 12 atoms" in proc.stdout
    expected = OnnxForceModel(trained)(feats["invariant"], feats["covariant"], feats["species"])
    np.testing.assert_array_equal(np.load(forces_path), expected)
    # the example refuses features of another spec
    other = workdir / "other.npz"
    spec2 = fastfeat.FeatureSpec.default(("H", "O"))
    (workdir / "spec2.json").write_text(spec2.to_json())
    assert cli(["featurize", str(workdir / "syn.extxyz"), "--spec", str(workdir / "spec2.json"), "--out", str(other)]) == 0
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "external_onnx.py"), str(trained), str(other)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "different FeatureSpec" in proc.stderr


def test_featurize_cli_errors(workdir, capsys):
    assert cli(["featurize", str(workdir / "missing.extxyz"), "--spec", str(workdir / "spec.json"),
                "--out", str(workdir / "x.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["featurize", str(workdir / "syn.extxyz"), "--model", "no-such-model", "--out", str(workdir / "x.npz")]) == 2
    assert "`--model`" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input
def _train(workdir, data, *extra):
    return cli(["train", "--data", str(data), "--spec", str(workdir / "spec.json"), "--epochs", "1", "--quiet",
                "--cache-dir", str(workdir / "cache"), "--out", str(workdir / "bad.onnx"), *extra])


def test_data_without_forces(workdir, capsys):
    frames = synthetic_frames(4, seed=1)
    frames[2].calc = None
    ase.io.write(workdir / "noforces.extxyz", frames)
    assert _train(workdir, workdir / "noforces.extxyz") == 2
    err = capsys.readouterr().err
    assert "frame 2" in err and "forces" in err and "noforces.extxyz" in err


def test_species_not_in_spec(workdir, capsys):
    frames = synthetic_frames(4, seed=2)
    frames[3][5].symbol = "Li"
    frames[3].calc = SinglePointCalculator(frames[3], forces=np.zeros((12, 3)))
    ase.io.write(workdir / "li.extxyz", frames)
    assert _train(workdir, workdir / "li.extxyz") == 2
    err = capsys.readouterr().err
    assert "Li" in err and "not in the spec's species ['H', 'O']" in err and "atom 5" in err
    assert "li.extxyz: frame 3," in err, err  # the frame's number in the file, not in the training split


def test_bad_cell_names_the_frame_of_the_file(workdir, capsys):
    frames = synthetic_frames(6, seed=3)
    frames[4].cell = np.zeros((3, 3))
    frames[4].pbc = True
    ase.io.write(workdir / "zerocell.extxyz", frames)
    assert _train(workdir, workdir / "zerocell.extxyz") == 2
    err = capsys.readouterr().err
    assert "zerocell.extxyz: frame 4: `cell` vector 0 has zero length but axis 0 is periodic" in err, err


def test_empty_dataset(workdir, capsys):
    (workdir / "empty.extxyz").write_text("")
    assert _train(workdir, workdir / "empty.extxyz") == 2
    assert "empty" in capsys.readouterr().err


def test_nan_forces_name_the_frame(workdir, capsys):
    frames = synthetic_frames(5, seed=3)
    f = frames[4].get_forces().copy()
    f[7, 1] = np.nan
    frames[4].calc = SinglePointCalculator(frames[4], forces=f)
    ase.io.write(workdir / "nan.extxyz", frames)
    assert _train(workdir, workdir / "nan.extxyz") == 2
    err = capsys.readouterr().err
    assert "frame 4" in err and ("NaN" in err or "not finite" in err) and "atom 7" in err


def test_frame_targets_checks_in_memory_frames():
    from fastfeat.train.data import frame_targets

    frames = synthetic_frames(3, seed=8)
    with pytest.raises(ValueError, match="dataset is empty"):
        frame_targets([], label="mine")
    frames[1].calc = None
    with pytest.raises(ValueError, match="mine: frame 1 has no forces"):
        frame_targets(frames, label="mine")
    frames = synthetic_frames(3, seed=8)
    frames[2].arrays["polar"][4, 0] = np.inf
    with pytest.raises(ValueError, match=r"frame 2 has non-finite `polar` \(NaN or inf\) at atom 4"):
        frame_targets(frames, "polar")
    frames[0].arrays["bad"] = np.zeros((12, 2))
    with pytest.raises(ValueError, match=r"frame 0 has `bad` of shape \(12, 2\), expected \(12, 3\)"):
        frame_targets(frames, "bad")


def test_unknown_target_key(workdir, capsys):
    assert _train(workdir, workdir / "syn.extxyz", "--target", "dipoles") == 2
    err = capsys.readouterr().err
    assert "`dipoles`" in err and "polar" in err


def test_unknown_config_key(workdir, capsys):
    cfg = workdir / "bad.toml"
    cfg.write_text('head = "basis"\nlearning_rate = 0.01\n')
    assert _train(workdir, workdir / "syn.extxyz", "--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert "unknown config key `learning_rate`" in err and "lr" in err and "batch_size" in err


def test_config_and_spec_files_are_named_in_errors(workdir, tmp_path, capsys):
    (tmp_path / "notjson.json").write_text("nope")
    (tmp_path / "binary.json").write_bytes(b"\xb9\xff")
    for args, match in ((["--config", str(tmp_path)], "`--config` '.*' is a folder, not a TOML file"),
                        (["--spec", str(tmp_path)], "`--spec` file '.*' is a folder, not a FeatureSpec JSON file"),
                        (["--spec", str(tmp_path / "binary.json")], "`--spec` file '.*binary.json' is not a text file"),
                        (["--spec", str(tmp_path / "notjson.json")], "`--spec` file '.*notjson.json': not valid")):
        rc = cli(["train", "--data", str(workdir / "syn.extxyz"), *args, "--epochs", "1", "--quiet", "--out",
                  str(workdir / "bad.onnx")])
        err = capsys.readouterr().err
        assert rc == 2 and re.search(match, err) and "Errno" not in err, err


def test_unknown_dataset_name(workdir, capsys):
    assert _train(workdir, "no-such-dataset") == 2
    assert "no-such-dataset" in capsys.readouterr().err


def test_evaluate_errors(trained, workdir, capsys):
    assert cli(["evaluate", str(workdir / "nothing.onnx"), str(workdir / "syn.extxyz")]) == 2
    err = capsys.readouterr().err
    assert "`MODEL` file '" in err and "nothing.onnx' does not exist" in err, err
    assert cli(["evaluate", "nothing", str(workdir / "syn.extxyz")]) == 2
    assert "`MODEL` must be an .onnx file or a bundled model name" in capsys.readouterr().err
    frames = synthetic_frames(2, seed=4)
    for a in frames:
        a.calc = None
    ase.io.write(workdir / "noforces2.extxyz", frames)
    assert cli(["evaluate", str(trained), str(workdir / "noforces2.extxyz"), "--target", "forces"]) == 2
    err = capsys.readouterr().err
    assert "frame 0" in err and "forces" in err and "noforces2.extxyz" in err


def _no_work(*args, **kwargs):
    raise AssertionError("data was read / work was done before the output paths were checked")


def test_train_checks_output_paths_before_reading_data(workdir, tmp_path, capsys, monkeypatch):
    """A bad --out/--checkpoint/--history/--cache-dir fails at once (exit 2, no traceback), like `fastfeat md`;
    the default checkpoint OUT.ckpt under a missing folder used to crash in torch.save after an epoch."""
    import fastfeat.train.cli as train_cli

    monkeypatch.setattr(train_cli, "prepare_features", _no_work)
    missing = tmp_path / "missing"
    ok = str(tmp_path / "ok.onnx")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (["--out", str(missing / "s.onnx")], ["`--out`", "does not exist", str(missing)]),
        (["--out", ok, "--checkpoint", str(missing / "c.ckpt")], ["`--checkpoint`", "does not exist"]),
        (["--out", ok, "--history", str(missing / "h.json")], ["`--history`", "does not exist"]),
        (["--out", str(tmp_path / "folder")], ["`--out`", "folder"]),
        (["--out", ok, "--checkpoint", ok], ["`--checkpoint` must differ from `--out`"]),
        (["--out", ok, "--resume"], ["`--resume` needs an existing checkpoint", "ok.onnx.ckpt"]),
        (["--out", ok, "--cache-dir", str(tmp_path / "file.txt")], ["`--cache-dir`", "not a folder"]),
    ]
    for extra, expected in cases:
        rc = cli(["train", "--data", str(workdir / "syn.extxyz"), "--epochs", "1", "--quiet", *extra])
        err = capsys.readouterr().err
        assert rc == 2, (extra, err)
        assert err.startswith("fastfeat train: error: ") and "Traceback" not in err
        for text in expected:
            assert text in err, (extra, err)
    assert not missing.exists() and not os.path.exists(ok)  # nothing created


def test_unreadable_data_files_are_clear_errors(trained, workdir, tmp_path, capsys):
    """Empty, non-structure, truncated, folder and missing data files: exit 2 naming the argument and the
    file, for `train --data` and `evaluate DATA`, whatever the target."""
    text = (workdir / "syn.extxyz").read_text()
    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "notes.txt").write_text("not a structure\n")
    (tmp_path / "cut.extxyz").write_text(text[: len(text) // 2 - 100])
    (tmp_path / "folder").mkdir()
    cases = {"empty.extxyz": "is empty", "notes.txt": "cannot read", "cut.extxyz": "cannot read",
             "folder": "is a folder", "nothere.extxyz": "does not exist", "sub/nothere": "does not exist"}
    for name, expected in cases.items():
        path = str(tmp_path / name) if name != "sub/nothere" else name
        for target in ([], ["--target", "polar"]):
            assert _train(workdir, path, *target) == 2, name
            err = capsys.readouterr().err
            assert err.startswith("fastfeat train: error: `--data` file") or "`--data` file" in err, err
            assert expected in err and name.split("/")[-1] in err and "Traceback" not in err, err
            assert cli(["evaluate", str(trained), path, *target]) == 2, name
            err = capsys.readouterr().err
            assert err.startswith("fastfeat evaluate: error: ") and "`DATA` file" in err, err
            assert expected in err and name.split("/")[-1] in err, err
        if expected == "does not exist":  # a path, not an unknown data set name; the names are listed too
            assert "'peo'" in err and "must be one of" not in err
    # a plain word is still looked up among the bundled data sets
    assert cli(["evaluate", str(trained), "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-set' is neither a file nor a bundled data set" in err and "'peo'" in err


def test_evaluate_accepts_name_split_and_checks_plot_first(tmp_path, capsys, monkeypatch):
    """DATA as NAME:SPLIT (as `fastfeat md` takes it) equals --split; a conflicting pair, an unknown split and
    an unwritable --plot are refused before anything is computed."""
    import fastfeat.train.cli as train_cli

    assert cli(["evaluate", "peo", "peo:val", "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert cli(["evaluate", "peo", "peo", "--split", "val", "--json"]) == 0
    by_flag = json.loads(capsys.readouterr().out)
    assert by_name["data"] == by_flag["data"] == "peo[val]"
    assert by_name["rmse"] == by_flag["rmse"] and by_name["n_structures"] == by_flag["n_structures"]
    monkeypatch.setattr(train_cli, "evaluate", _no_work)
    (tmp_path / "frames.extxyz").write_text("")
    for argv, expected in [
        (["peo", "peo:val", "--split", "test"], "names split 'val' but `--split` is 'test'"),
        (["peo", str(tmp_path / "frames.extxyz"), "--split", "val"], "is a file, which is used whole"),
        (["peo", "peo:training"], "must be one of ['train', 'val', 'test', 'all'], got 'training'"),
        (["peo", "peo", "--plot", str(tmp_path / "missing" / "p.png")], "cannot write `--plot`"),
        (["peo", "peo", "--plot", str(tmp_path / "p.xyz")], "cannot write .xyz files"),
    ]:
        assert cli(["evaluate", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fastfeat evaluate: error: ") and expected in err, err


def test_evaluate_plot_without_suffix_is_png(tmp_path, capsys, monkeypatch):
    """`--plot parity` writes (and checks, and reports) parity.png, the file matplotlib makes."""
    import fastfeat.train.cli as train_cli
    import fastfeat.train.evaluate as train_evaluate

    written = []
    monkeypatch.setattr(train_evaluate, "parity_plot", lambda *a, **k: written.append(a[4]))
    monkeypatch.chdir(tmp_path)
    assert cli(["evaluate", "peo", "peo:val", "--plot", "parity"]) == 0
    assert written == ["parity.png"]
    assert "parity plot: parity.png" in capsys.readouterr().out
    monkeypatch.setattr(train_cli, "evaluate", _no_work)
    assert cli(["evaluate", "peo", "peo", "--plot", str(tmp_path / "missing" / "parity")]) == 2
    err = capsys.readouterr().err
    assert "cannot write `--plot`" in err and "parity.png" in err, err


def test_evaluate_unreadable_model(workdir, tmp_path, capsys):
    (tmp_path / "junk.onnx").write_text("junk")
    assert cli(["evaluate", str(tmp_path / "junk.onnx"), str(workdir / "syn.extxyz")]) == 2
    err = capsys.readouterr().err
    assert "cannot read `model`" in err and "junk.onnx" in err and "Traceback" not in err


def test_resume_help_documents_the_schedule(capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--epochs is the new total" in out and "re-planned" in out


def test_example_config_is_the_bundled_models_config():
    import os

    from fastfeat.train.bundle_models import bundled_config
    from fastfeat.train.config import load_config

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "bundled.toml")
    if not os.path.exists(path):
        pytest.skip("examples/ is not part of an installed package")
    assert load_config(path, threads=1) == bundled_config("basis")


def test_train_without_torch_is_a_one_line_error(trained, workdir, tmp_path):
    """A base install (`pip install -e .`) has no torch, onnx or matplotlib: `fastfeat train` says what to
    install (one line, exit 2), `fastfeat evaluate` runs on onnxruntime alone, its `--plot` names matplotlib.
    A subprocess, so that blocking the imports cannot affect other tests."""
    code = textwrap.dedent(f"""
        import sys
        for name in ("torch", "onnx", "matplotlib"):
            sys.modules[name] = None  # import fails as when not installed
        from fastfeat.cli import main
        train = ["train", "--data", {str(workdir / "syn.extxyz")!r}, "--out", {str(tmp_path / "m.onnx")!r}]
        print("train", main(train), flush=True)
        print("evaluate", main(["evaluate", {str(trained)!r}, {str(workdir / "syn.extxyz")!r}, "--json"]), flush=True)
        print("plot", main(["evaluate", {str(trained)!r}, {str(workdir / "syn.extxyz")!r}, "--plot",
                            {str(tmp_path / "p.png")!r}]), flush=True)
        assert all(sys.modules[name] is None for name in ("torch", "onnx", "matplotlib"))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "train 2\n" in r.stdout and "evaluate 0\n" in r.stdout and "plot 2\n" in r.stdout, r.stdout
    assert '"rel_rmse"' in r.stdout
    assert r.stderr.splitlines() == [
        'fastfeat train: error: training needs PyTorch: pip install "fastfeat[train]" (see README)',
        'fastfeat evaluate: error: `--plot` needs matplotlib: pip install "fastfeat[train]" (see README)',
    ], r.stderr
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p.png").exists()


def test_train_names_a_missing_onnx(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert cli(["train", "--data", str(workdir / "syn.extxyz"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err == ('fastfeat train: error: training needs onnx: pip install "fastfeat[train]" '
                                       '(see README)\n')


def test_forces_under_another_key(workdir, capsys):
    """A file that keeps its reference forces in a column named otherwise (REF_forces): `--forces-key` trains a
    force field from it (the model predicts forces, usable by the runtime), `evaluate` reads it the same way."""
    from fastfeat.runtime import ForceModel

    frames = synthetic_frames(12, seed=5)
    for a in frames:
        a.arrays["REF_forces"] = a.get_forces().copy()
        a.calc = None
    ase.io.write(workdir / "ref.extxyz", frames)
    assert _train(workdir, workdir / "ref.extxyz") == 2
    err = capsys.readouterr().err
    assert "`forces_key` 'forces' not found in frame 0" in err and "`--forces-key REF_forces`" in err, err
    out = workdir / "ref.onnx"
    assert cli(["train", "--data", str(workdir / "ref.extxyz"), "--forces-key", "REF_forces", "--spec",
                str(workdir / "spec.json"), "--epochs", "2", "--quiet", "--cache-dir", str(workdir / "cache"),
                "--out", str(out)]) == 0
    capsys.readouterr()
    m = ForceModel.load(out)
    assert m.predicts_forces and m.forces(frames[0]).shape == (12, 3)
    assert cli(["evaluate", str(out), str(workdir / "ref.extxyz"), "--forces-key", "REF_forces", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_structures"] == 12
    assert cli(["evaluate", str(out), "peo", "--forces-key", "REF_forces"]) == 2
    assert "the bundled data set 'peo' keeps them under 'forces'" in capsys.readouterr().err
    assert _train(workdir, workdir / "ref.extxyz", "--forces-key", "REF_forces", "--target", "polar") == 2
    assert "`forces_key` ('REF_forces') names where a file keeps the forces" in capsys.readouterr().err


def test_element_only_in_held_out_frames_is_refused(workdir, capsys):
    """An element in validation frames only would get an untrained network while the validation errors looked
    like a trained model's: refused, naming the element and the frame (its number in the file)."""
    from fastfeat.train.data import split_frames

    frames = synthetic_frames(10, seed=6)
    _, i_va = split_frames(len(frames), 0.1, 0)
    k = int(i_va[0])
    frames[k][0].symbol = "N"
    frames[k].calc = SinglePointCalculator(frames[k], forces=np.zeros((12, 3)))
    ase.io.write(workdir / "valonly.extxyz", frames)
    rc = cli(["train", "--data", str(workdir / "valonly.extxyz"), "--epochs", "1", "--quiet", "--cache-dir",
              str(workdir / "cache"), "--out", str(workdir / "bad.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and f"valonly.extxyz (held out for validation): frame {k} holds N" in err, err
    assert "would stay untrained" in err


def test_spec_species_without_training_atoms_is_refused(workdir, capsys):
    """A species of the spec that no training frame holds would export a random network that the runtime
    then serves: refused, naming it."""
    fields = json.loads((workdir / "spec.json").read_text())
    fields["species"] = ["H", "N", "O"]
    (workdir / "spec_hno.json").write_text(fastfeat.FeatureSpec.from_json(json.dumps(fields)).to_json())
    rc = cli(["train", "--data", str(workdir / "syn.extxyz"), "--spec", str(workdir / "spec_hno.json"), "--epochs",
              "1", "--quiet", "--cache-dir", str(workdir / "cache"), "--out", str(workdir / "bad.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "the spec's species N occur in no frame of" in err and "would stay untrained" in err, err


def test_file_split_holds_out_whole_trajectories():
    """Frames labelled by trajectory (info["trajectory"], as `fastfeat data generate` writes) are held out
    trajectory by trajectory; unlabelled (or partly labelled) frames by frame, as before."""
    from fastfeat.train.data import split_frames, trajectory_labels

    groups = [t for t in range(10) for _ in range(5)]  # 10 trajectories of 5 frames
    for seed in range(5):
        i_tr, i_va = split_frames(50, 0.2, seed, groups)
        tr, va = {groups[i] for i in i_tr}, {groups[i] for i in i_va}
        assert len(va) == 2 and not tr & va and len(i_tr) + len(i_va) == 50
        assert sorted(np.concatenate([i_tr, i_va]).tolist()) == list(range(50))
    assert len({groups[i] for i in split_frames(50, 0.01, 0, groups)[1]}) == 1  # at least one trajectory
    assert len({groups[split_frames(50, 0.01, seed, groups)[1][0]] for seed in range(10)}) > 1  # the seed picks it
    assert len({groups[i] for i in split_frames(50, 0.99, 0, groups)[0]}) == 1  # and one left for training
    # unequal trajectories: validation stays within val_fraction of the frames (the long one is never held out)
    unequal = [0] * 400 + [t for t in range(1, 5) for _ in range(20)]
    for seed in range(25):
        i_tr, i_va = split_frames(480, 0.1, seed, unequal)
        assert 20 <= len(i_va) <= 48 and 0 in {unequal[i] for i in i_tr}, (seed, len(i_va))
    # one trajectory only, or no labels: the frame split, unchanged
    for g in ([0] * 50, None):
        np.testing.assert_array_equal(split_frames(50, 0.2, 3, g)[1], split_frames(50, 0.2, 3)[1])
    frames = synthetic_frames(3, seed=0)
    assert trajectory_labels(frames) is None
    for k, a in enumerate(frames):
        a.info["trajectory"] = k // 2
    assert trajectory_labels(frames) == [0, 0, 1]
    frames[2].info["trajectory"] = "x"
    assert trajectory_labels(frames) is None


def test_train_on_a_labelled_file_says_it_splits_by_trajectory(workdir, tmp_path):
    frames = synthetic_frames(12, seed=9)
    for k, a in enumerate(frames):
        a.info["trajectory"] = k // 3
    ase.io.write(tmp_path / "traj.extxyz", frames)
    logs = []
    from fastfeat.train.cli import prepare_features
    from fastfeat.train.config import TrainConfig

    cfg = TrainConfig(val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    feats, _, _ = prepare_features(str(tmp_path / "traj.extxyz"), cfg, spec_path=str(workdir / "spec.json"),
                                   log=logs.append)
    assert any("validation holds out whole trajectories (info['trajectory']): 1 of 4, 3 frames" in m for m in logs)
    assert any("so validation has 3: its errors" in m for m in logs)
    assert feats["val"].n_structures == 3 and feats["train"].n_structures == 9


def test_negative_seed_is_named(workdir, capsys):
    assert _train(workdir, workdir / "syn.extxyz", "--seed", "-1") == 2
    assert "config `seed` must be >= 0, got -1" in capsys.readouterr().err


def test_resume_names_the_settings_that_changed_the_data(workdir, capsys):
    """Another seed (or val_fraction) splits a data file otherwise: resume refuses, naming the setting."""
    args = ["train", "--data", str(workdir / "syn.extxyz"), "--spec", str(workdir / "spec.json"), "--epochs", "1",
            "--quiet", "--cache-dir", str(workdir / "cache"), "--out", str(workdir / "rs.onnx")]
    assert cli(args) == 0
    capsys.readouterr()
    assert cli(args[:-2] + ["--out", str(workdir / "rs.onnx"), "--epochs", "2", "--resume", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "trained on other data" in err and "settings that select the data differ: seed 3 (was 0)" in err, err
    # the same command again without --resume starts afresh, and says so (a forgotten --resume)
    assert cli(args) == 0
    assert "rs.onnx.ckpt' exists and this run starts afresh, replacing it" in capsys.readouterr().err


def test_broken_pipe_ends_quietly(tmp_path, monkeypatch):
    """`fastfeat data list | head -1`: the reader goes away; the command ends with status 1, no traceback."""
    class ClosedPipe:
        def __init__(self, fd):
            self._fd = fd

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return self._fd

    with open(tmp_path / "out", "w") as fh:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(fh.fileno()))
        assert cli(["data", "list"]) == 1


def test_feature_cache_is_keyed_by_the_featurizer_sources(tmp_path, monkeypatch):
    """A cached feature file is read back only by the same fastfeat sources: a kernel change
    (another version, or a checkout between two commits) computes the features again."""
    import shutil

    from fastfeat.train import data

    frames = synthetic_frames(3, seed=5)
    targets = [a.arrays["polar"] for a in frames]
    spec = small_spec()
    logs = []
    first = data.cached_features(frames, targets, spec, cache_dir=str(tmp_path), log=logs.append)
    again = data.cached_features(frames, targets, spec, cache_dir=str(tmp_path), log=logs.append)
    assert "computed" in logs[0] and "cache hit" in logs[1]
    np.testing.assert_array_equal(first.invariant, again.invariant)
    with monkeypatch.context() as m:
        m.setattr(data, "featurizer_code_hash", lambda: "another kernel")
        data.cached_features(frames, targets, spec, cache_dir=str(tmp_path), log=logs.append)
    assert "computed" in logs[2], logs

    # the hash itself follows the bytes of any module of the package, the version and nothing in data/,
    # runtime/ or train/
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(fastfeat.__file__), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(data, "_CODE_HASH", [None, None])
    h0 = data.featurizer_code_hash(str(pkg))
    assert h0 == data.featurizer_code_hash(str(os.path.dirname(fastfeat.__file__)))
    (pkg / "data" / "extra.py").write_text("x = 1\n")
    for sub in ("runtime", "train"):  # where a wheel install puts fastfeat.runtime and fastfeat.train
        (pkg / sub).mkdir(exist_ok=True)
        (pkg / sub / "model.py").write_text("y = 2\n")
    monkeypatch.setattr(data, "_CODE_HASH", [None, None])
    assert data.featurizer_code_hash(str(pkg)) == h0
    kernel = pkg / "_kernels" / "features_cpu.py"
    kernel.write_text(kernel.read_text() + "\n# changed\n")
    monkeypatch.setattr(data, "_CODE_HASH", [None, None])
    assert data.featurizer_code_hash(str(pkg)) != h0
    monkeypatch.setattr(data, "_CODE_HASH", [None, None])
    monkeypatch.setattr(fastfeat, "__version__", "9.9.9")
    assert data.featurizer_code_hash(str(os.path.dirname(fastfeat.__file__))) != h0
