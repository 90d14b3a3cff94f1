"""ForceModel: loading/validation, forces vs a direct onnxruntime call, covariance."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from ase import Atoms

import fastfeat
from fastfeat.runtime import ForceModel, ModelLoadError
from fastfeat.runtime import model as model_module

from _models import make_basis_model, reference_forces
from conftest import random_water_box


# ------------------------------------------------------------------ validation
def test_load_reads_metadata(model, spec):
    assert model.spec == spec
    assert model.dtype == np.float32
    assert model.info.head == "basis"
    assert model.info.units["force"] == "eV/Å"
    assert model.info.validation == {"note": "untrained"}
    assert model.device == "cpu" and model.providers == ["CPUExecutionProvider"]
    assert "basis32.onnx" in repr(model)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ForceModel.load(tmp_path / "nope.onnx")


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        ForceModel.load(tmp_path)


def test_truncated_file(model_path, tmp_path):
    data = model_path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupted"):
        ForceModel.load(bad)


def test_graph_onnxruntime_refuses(model_path, tmp_path):
    """A well-formed ONNX file whose graph fails onnxruntime's checks is not called truncated."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(model_path))
    proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT32  # the graph computes floats
    bad = tmp_path / "retyped.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelLoadError, match="an ONNX model whose graph onnxruntime refuses") as info:
        ForceModel.load(bad)
    assert "truncated" not in str(info.value)


def test_non_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        ForceModel.load(bad)


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        ForceModel.load(bad)


@pytest.mark.parametrize("key", ["fastfeat.format_version", "fastfeat.spec", "fastfeat.species", "fastfeat.dtype"])
def test_missing_metadata(spec, tmp_path, key):
    path = make_basis_model(tmp_path / "m.onnx", spec, drop_metadata=(key,))
    with pytest.raises(ModelLoadError, match=f"lacks the fastfeat metadata.*{key}"):
        ForceModel.load(path)


def test_newer_model_format(spec, tmp_path):
    path = make_basis_model(tmp_path / "m.onnx", spec, metadata={"fastfeat.format_version": "2"})
    with pytest.raises(ModelLoadError, match="model format version 2, newer"):
        ForceModel.load(path)


def test_newer_featurespec_format(spec, tmp_path):
    data = spec.to_dict()
    data["format_version"] = fastfeat.SPEC_FORMAT_VERSION + 1
    path = make_basis_model(tmp_path / "m.onnx", spec, metadata={"fastfeat.spec": json.dumps(data)})
    with pytest.raises(ModelLoadError, match="FeatureSpec.*newer"):
        ForceModel.load(path)


def test_species_metadata_mismatch(spec, tmp_path):
    path = make_basis_model(tmp_path / "m.onnx", spec, metadata={"fastfeat.species": '["O", "H"]'})
    with pytest.raises(ModelLoadError, match="differs from the FeatureSpec"):
        ForceModel.load(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_names": ("features", "covariant", "species")}, "inputs must be named"),
        ({"output_name": "force"}, "needs an output named 'forces'"),
        ({"n_invariant": 5}, r"input 'invariant' must have shape \[n_atoms, 14\]"),
        ({"fixed_atoms": 12}, "must be the dynamic 'n_atoms'"),
        ({"metadata": {"fastfeat.dtype": "float64"}}, r"must be tensor\(double\)"),
    ],
)
def test_signature_mismatch(spec, tmp_path, kwargs, message):
    path = make_basis_model(tmp_path / "m.onnx", spec, **kwargs)
    with pytest.raises(ModelLoadError, match=message):
        ForceModel.load(path)


@pytest.mark.parametrize("head", ["magic", "", "Basis", "energy"])
def test_unknown_head_is_refused(model_path, tmp_path, head):
    from _models import with_metadata

    path = with_metadata(model_path, tmp_path / "m.onnx", head=head)
    with pytest.raises(ModelLoadError, match=(
            rf"metadata `fastfeat.head` must be one of \['projection', 'basis'\], got {head!r}")):
        ForceModel.load(path)


@pytest.mark.parametrize("head", ["projection", "basis"])
def test_known_heads_load_and_a_missing_head_key_is_allowed(model_path, spec, tmp_path, head):
    from _models import with_metadata

    assert ForceModel.load(with_metadata(model_path, tmp_path / "m.onnx", head=head)).info.head == head
    old = ForceModel.load(make_basis_model(tmp_path / "old.onnx", spec, drop_metadata=["fastfeat.head"]))
    assert old.info.head == ""


def test_make_metadata_refuses_an_unknown_head(spec):
    from fastfeat.runtime._onnx_meta import make_metadata

    with pytest.raises(ValueError, match=r"`head` must be one of \['projection', 'basis'\], got 'magic'"):
        make_metadata(spec, head="magic")


def test_known_heads_are_the_trainers_heads():
    """KNOWN_HEADS mirrors the trainer's HEADS, read from fastfeat.train's sources (a literal
    top-level ``HEADS = (...)`` in any of its modules): the runtime tests never import torch."""
    import ast
    import importlib.util
    from pathlib import Path

    from fastfeat.runtime._onnx_meta import KNOWN_HEADS

    train_dir = Path(importlib.util.find_spec("fastfeat.train").origin).parent
    heads = []
    for source in sorted(train_dir.glob("*.py")):
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HEADS" for t in node.targets)
                    and isinstance(node.value, (ast.Tuple, ast.List))):
                heads.append((source.name, tuple(ast.literal_eval(node.value))))
    assert heads, f"no literal `HEADS = (...)` found in {train_dir}"
    assert all(h == KNOWN_HEADS for _, h in heads), heads


@pytest.mark.parametrize("skin", [float("inf"), float("nan"), -0.5, -1, True, False, np.bool_(True), "1.0", None, 10 ** 400])
def test_bad_skin_is_refused_at_load(model_path, skin):
    with pytest.raises(ValueError, match=r"`skin` must be a finite number >= 0 \(Å\), got "):
        ForceModel.load(model_path, skin=skin)


@pytest.mark.parametrize("skin", [0, 0.0, 2, 0.25, np.float32(0.5), np.int64(1)])
def test_good_skin_is_accepted(model_path, water, skin):
    m = ForceModel.load(model_path, skin=skin)
    assert m.skin == float(skin) and type(m.skin) is float
    assert m.forces(water).shape == (len(water), 3)


def test_pretrained_refuses_a_bad_skin():
    from fastfeat.runtime import pretrained_names

    if "peo" not in pretrained_names():
        pytest.skip("bundled model 'peo' not present")
    with pytest.raises(ValueError, match=r"`skin` must be a finite number >= 0 \(Å\), got inf"):
        ForceModel.pretrained("peo", skin=float("inf"))


def test_pretrained_unknown_name_lists_available():
    with pytest.raises(ValueError, match=r"no bundled model named 'nope'; available: \["):
        ForceModel.pretrained("nope")


def test_bad_device(model_path):
    with pytest.raises(ValueError, match="`device` must be 'cpu' or 'cuda'"):
        ForceModel.load(model_path, device="tpu")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA EP is installed")
def test_cuda_unavailable_is_a_clear_error(model_path):
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider"):
        ForceModel.load(model_path, device="cuda")


# ---------------------------------------------------------------------- forces
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forces_equal_direct_onnxruntime_call(spec, model_path, model64_path, dtype):
    path = model_path if dtype == "float32" else model64_path
    model = ForceModel.load(path)
    atoms = random_water_box(seed=3)
    forces = model.forces(atoms)
    assert forces.shape == (len(atoms), 3) and forces.dtype == np.float64
    feats = fastfeat.featurize(atoms, spec, dtype=dtype)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    direct = session.run(None, {"invariant": feats.invariant, "covariant": feats.covariant,
                                "species": feats.species.astype(np.int64)})[0]
    # the same features through ForceModel give exactly the direct call's forces ...
    np.testing.assert_array_equal(model.forces_from_features(feats.invariant, feats.covariant, feats.species),
                                  direct.astype(np.float64))
    # ... and the MD path (Featurizer with a skin: other summation order) agrees to rounding
    tol = 2e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(forces, direct, rtol=tol, atol=tol * np.abs(direct).max())
    ref = reference_forces(spec, feats.invariant, feats.covariant, feats.species)
    np.testing.assert_allclose(forces, ref, rtol=1e-4 if dtype == "float32" else 1e-10,
                               atol=1e-5 if dtype == "float32" else 1e-12)
    assert np.abs(forces).max() > 0.05  # a non-trivial test model


def test_rotation_covariance(model64_path):
    model = ForceModel.load(model64_path)
    atoms = random_water_box(seed=5, pbc=False)
    rng = np.random.default_rng(11)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rot = q * np.sign(np.diag(r))
    if np.linalg.det(rot) < 0:
        rot[:, 0] *= -1
    f0 = model.forces(atoms)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    f1 = model.forces(rotated)
    np.testing.assert_allclose(f1, f0 @ rot.T, atol=1e-10, err_msg=f"rotation {rot.tolist()}")


def test_model_on_angular_covariant_spec_loads_and_rotates(spec, tmp_path):
    # a spec with angular covariant vectors (FeatureSpec JSON format 2) round-trips through the model file;
    # the runtime computes them (CPU) and the forces rotate with the structure
    import dataclasses

    wspec = dataclasses.replace(spec, covariant_angular=((0.05, 1.0, 1.0), (0.2, 2.0, -1.0)))
    model = ForceModel.load(make_basis_model(tmp_path / "w.onnx", wspec, dtype="float64"))
    assert model.spec == wspec and model.spec.n_covariant > spec.n_covariant
    atoms = random_water_box(seed=7, pbc=False)
    f = fastfeat.featurize(atoms, wspec, dtype=np.float64)
    f0 = model.forces(atoms)
    np.testing.assert_allclose(f0, reference_forces(wspec, f.invariant, f.covariant, f.species), rtol=1e-10,
                               atol=1e-12)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ \
        np.array([[1.0, 0.0, 0.0], [0.0, 0.6, -0.8], [0.0, 0.8, 0.6]])
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    np.testing.assert_allclose(model.forces(rotated), f0 @ rot.T, atol=1e-10)


def test_rotation_covariance_periodic_float32(model_path):
    model = ForceModel.load(model_path)
    atoms = random_water_box(seed=6)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ \
        np.array([[1.0, 0.0, 0.0], [0.0, 0.6, -0.8], [0.0, 0.8, 0.6]])
    f0 = model.forces(atoms)
    rotated = Atoms(atoms.numbers, positions=atoms.positions @ rot.T, cell=atoms.cell.array @ rot.T, pbc=True)
    f1 = model.forces(rotated)
    np.testing.assert_allclose(f1, f0 @ rot.T, atol=2e-5 * np.abs(f0).max(), err_msg=f"rotation {rot.tolist()}")


def test_forces_batch_equals_single(model):
    frames = [random_water_box(seed=s) for s in range(3)] + [random_water_box(n_molecules=4, box=5.0, seed=9)]
    batch = model.forces_batch(frames)
    assert len(batch) == len(frames)
    for atoms, f in zip(frames, batch):
        np.testing.assert_allclose(f, model.forces(atoms), rtol=1e-5, atol=1e-6)
    assert model.forces_batch([]) == []


def test_unknown_species_named(model, water):
    water[4].symbol = "Li"
    with pytest.raises(ValueError, match=r"atom 4 is Li.*\['H', 'O'\]"):
        model.forces(water)
    with pytest.raises(ValueError, match="structure 1: atom 4 is Li"):
        model.forces_batch([random_water_box(), water])


def test_evaluator_reuses_neighbour_list(model, spec):
    atoms = random_water_box(seed=2)
    ev = model.evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
    rng = np.random.default_rng(0)
    x = atoms.positions.copy()
    for k in range(5):
        x += rng.uniform(-0.02, 0.02, x.shape)
        moved = atoms.copy()
        moved.positions = x
        f = ev(x).copy()
        feats = fastfeat.featurize(moved, spec)
        ref = reference_forces(spec, feats.invariant, feats.covariant, feats.species)
        np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)
    assert ev.n_rebuilds == 1
    assert model.skin == 1.0
    x[3] += [0.6, 0.0, 0.0]  # one atom beyond skin / 2 (not beyond the skin): the list is rebuilt
    moved = atoms.copy()
    moved.positions = x
    feats = fastfeat.featurize(moved, spec)
    np.testing.assert_allclose(ev(x), reference_forces(spec, feats.invariant, feats.covariant, feats.species),
                               rtol=1e-4, atol=1e-5)
    assert ev.n_rebuilds == 2


def test_forces_follow_structure_changes(model):
    """The per-thread cached evaluator must notice a new structure."""
    a, b = random_water_box(seed=1), random_water_box(n_molecules=5, box=5.5, seed=4)
    fa, fb = model.forces(a), model.forces(b)
    fresh = ForceModel.load(model.path)
    np.testing.assert_array_equal(fa, fresh.forces(a))
    np.testing.assert_array_equal(fb, ForceModel.load(model.path).forces(b))
    c = a.copy()
    c.set_cell(a.cell.array * 1.05, scale_atoms=False)
    np.testing.assert_array_equal(model.forces(c), ForceModel.load(model.path).forces(c))
    assert not np.array_equal(model.forces(c), fa)


def test_resolve_model(model_path, model):
    assert model_module.resolve_model(model) is model
    assert model_module.resolve_model(str(model_path)).spec == model.spec
    with pytest.raises(TypeError, match="`model` must be"):
        model_module.resolve_model(3)


def test_no_torch_imported(model_path, water_file, tmp_path):
    code = f"""
import sys
import ase.io
from fastfeat.runtime import ForceModel, Calculator, run_md
import fastfeat.runtime.md_cli, fastfeat.runtime.conservation, fastfeat.runtime.demo
model = ForceModel.load({str(model_path)!r})
atoms = ase.io.read({str(water_file)!r})
model.forces(atoms)
atoms.calc = Calculator(model)
atoms.get_forces()
run_md(model, atoms, 5, out={str(tmp_path / 't.extxyz')!r})
from fastfeat.runtime._structures import bundled_dataset_names, bundled_frames
if "peo" in bundled_dataset_names():  # the demo's data path (fastfeat.train.datasets) must stay torch-free
    bundled_frames("peo", "test")
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_evaluator_system_is_read_only(model, water):
    """The featurizer of an evaluator skips the checks of numbers, cell and pbc between steps, so the
    evaluator's copies of them cannot be changed in place."""
    ev = model.evaluator(water.numbers, water.cell.array, water.pbc)
    ev(water.positions)
    for arr, index, value in ((ev.cell, (0, 0), 1.0), (ev.numbers, 0, 8), (ev.pbc, 1, False)):
        with pytest.raises(ValueError, match="read-only"):
            arr[index] = value
    assert ev.same_system(water.numbers, water.cell.array, water.pbc)


def test_evaluator_checks_its_system_as_featurize_does(model, water):
    """numbers, cell and pbc go through the featurizer's checks: no silent truncation of float atomic
    numbers, no booleans read as hydrogen, no string read as a periodic axis; cell None for a molecule;
    positions of another shape named as such."""
    n, cell, pbc = water.numbers, water.cell.array, water.pbc
    for numbers, exc, match in ((n + 0.5, TypeError, "integer array of atomic numbers"),
                                (np.ones(len(n), dtype=bool), TypeError, "integer array"),
                                (n[None, :], ValueError, r"`numbers` must have shape \(N,\)"),
                                (np.full(len(n), 6), ValueError, "not in the spec's species")):
        with pytest.raises(exc, match=match):
            model.evaluator(numbers, cell, pbc)
    for bad, exc, match in (("F", ValueError, "`pbc` must be a bool or a sequence of 3 bools, got 'F'"),
                            ([True, True], ValueError, "`pbc` must be a bool or a sequence of 3 bools"),
                            ([0.5, 1, 1], TypeError, "`pbc` must contain booleans")):
        with pytest.raises(exc, match=match):
            model.evaluator(n, cell, bad)
    with pytest.raises(ValueError, match="`cell` vector 0 has zero length but axis 0 is periodic"):
        model.evaluator(n, np.zeros((3, 3)), True)
    molecule = water.copy()
    molecule.pbc = False
    ev = model.evaluator(n, None, False)
    np.testing.assert_array_equal(ev(molecule.positions), model.forces(molecule))
    for bad in (molecule.positions[:5], molecule.positions.ravel(), molecule.positions[:, :2].tolist()):
        with pytest.raises(ValueError, match=rf"`positions` must have shape \({len(n)}, 3\)"):
            ev(bad)


def test_unwrapped_positions_give_the_same_forces(model, water):
    """MD never wraps positions: atoms displaced by lattice vectors must see the same forces."""
    f0 = model.forces(water)
    moved = water.copy()
    moved.positions[0] += water.cell[0]
    moved.positions[5] -= 2 * water.cell[2]
    moved.positions[7] += water.cell[1] + water.cell[2]
    np.testing.assert_allclose(model.forces(moved), f0, rtol=1e-4, atol=1e-5 * np.abs(f0).max())
    ev = model.evaluator(water.numbers, water.cell.array, water.pbc)
    ev(water.positions)
    np.testing.assert_allclose(ev(moved.positions), f0, rtol=1e-4, atol=1e-5 * np.abs(f0).max())


@pytest.mark.parametrize("name", ["peo", "li4p2o7", "li4p2o7-water"])
def test_bundled_model_loads_and_matches_its_stored_test_error(name):
    from fastfeat.runtime import pretrained_names
    from fastfeat.runtime._structures import bundled_dataset_names, bundled_frames

    if name not in pretrained_names() or name not in bundled_dataset_names():
        pytest.skip(f"bundled model or data set {name!r} not present")
    model = ForceModel.pretrained(name)
    assert model.info.target == "forces" and model.info.data_hash
    frames = bundled_frames(name, "test")[:5]
    forces = model.forces_batch(frames)
    np.testing.assert_allclose(forces[0], model.forces(frames[0]), rtol=1e-4, atol=1e-4)
    ref = np.concatenate([a.get_forces() for a in frames])
    rel_rmse = np.sqrt(((np.concatenate(forces) - ref) ** 2).mean() / (ref ** 2).mean())
    stored = model.info.validation.get("test", {}).get("rel_rmse")
    assert rel_rmse < 1.0
    if stored is not None:  # five frames scatter around the stored whole-split figure
        assert rel_rmse < 2.0 * stored + 0.05, (rel_rmse, stored)


# ------------------------------------------------------------ learned target
NOT_FORCES = r"predicts 'dipole', not forces"


def test_non_force_model_loads_but_refuses_every_force_method(dipole_model_path, water):
    m = ForceModel.load(dipole_model_path)
    assert m.target == "dipole" and m.info.target == "dipole" and not m.predicts_forces
    assert "target='dipole'" in repr(m)
    with pytest.raises(ValueError, match=NOT_FORCES + ".*fastfeat evaluate"):
        m.forces(water)
    with pytest.raises(ValueError, match=NOT_FORCES):
        m.forces_batch([water])
    with pytest.raises(ValueError, match=NOT_FORCES):
        m.evaluator(water.numbers, water.cell.array, water.pbc)
    with pytest.raises(ValueError, match=NOT_FORCES):
        model_module.ForceEvaluator(m, water.numbers, water.cell.array, water.pbc)
    feats = fastfeat.featurize(water, m.spec)
    with pytest.raises(ValueError, match=NOT_FORCES):
        m.forces_from_features(feats.invariant, feats.covariant, feats.species)


@pytest.mark.parametrize("target", ["momenta", "Forces", ""])
def test_only_the_target_forces_is_a_force_model(model_path, tmp_path, water, target):
    from _models import with_metadata

    m = ForceModel.load(with_metadata(model_path, tmp_path / "m.onnx", target=target))
    with pytest.raises(ValueError, match=f"predicts {target!r}, not forces"):
        m.forces(water)


def test_force_model_in_another_unit_is_refused(model_path, tmp_path, water):
    """The runtime's forces are eV/Å (ASE's unit): a model whose metadata says otherwise is no force field for
    it; the spellings of eV/Å pass."""
    from _models import with_metadata

    kcal = ForceModel.load(with_metadata(model_path, tmp_path / "k.onnx",
                                         units=json.dumps({"length": "Å", "force": "kcal/mol/A"})))
    assert kcal.predicts_forces
    for call in (lambda: kcal.forces(water), lambda: kcal.evaluator(water.numbers, water.cell.array, water.pbc),
                 lambda: kcal.forces_batch([water])):
        with pytest.raises(ValueError, match=r"predicts forces in 'kcal/mol/A' \(metadata `fastfeat.units`\), not eV/Å"):
            call()
    for unit in ("eV/A", "eV/Angstrom"):
        ok = ForceModel.load(with_metadata(model_path, tmp_path / "e.onnx", units=json.dumps({"force": unit})))
        assert ok.forces(water).shape == (len(water), 3)


def test_force_model_target_and_missing_target_key(model, spec, tmp_path, water):
    assert model.target == "forces" and model.predicts_forces
    model.require_forces()
    # files without the key (older exports) are force models
    old = ForceModel.load(make_basis_model(tmp_path / "old.onnx", spec, drop_metadata=["fastfeat.target"]))
    assert old.target == "forces"
    assert old.forces(water).shape == (len(water), 3)


def test_forces_argument_types(model, water):
    with pytest.raises(TypeError, match=r"`atoms` must be one ase.Atoms, got list.*forces_batch"):
        model.forces([water])
    with pytest.raises(TypeError, match="`atoms` must be one ase.Atoms, got ndarray"):
        model.forces(water.positions)
    with pytest.raises(TypeError, match=r"`atoms_list` must be a sequence of ase.Atoms, got one ase.Atoms.*forces\(atoms\)"):
        model.forces_batch(water)
    with pytest.raises(TypeError, match=r"`atoms_list\[1\]` must be one ase.Atoms, got ndarray"):
        model.forces_batch([water, water.positions])
    with pytest.raises(TypeError, match="`atoms_list` must be a sequence of ase.Atoms, got int"):
        model.forces_batch(3)
    assert model.forces_batch(()) == []


# ------------------------------------------------------- forces_from_features
@pytest.fixture
def water_feats(model, water):
    feats = fastfeat.featurize(water, model.spec, dtype=model.dtype)
    return np.asarray(feats.invariant), np.asarray(feats.covariant), np.asarray(feats.species)


@pytest.mark.parametrize("change, atom, value", [
    (lambda s: s + 5, 0, 5 + 1),          # water's first atom is O (index 1)
    (lambda s: np.where(np.arange(len(s)) == 4, -1, s), 4, -1),
    (lambda s: np.where(np.arange(len(s)) == 7, 2, s), 7, 2),   # == n_species
    (lambda s: s.astype(np.uint8) + np.uint8(200), 0, 201),
])
def test_forces_from_features_refuses_out_of_range_species(model, water_feats, change, atom, value):
    g, v, s = water_feats
    assert s[0] == 1
    with pytest.raises(ValueError, match=(rf"`species` holds {value} at atom {atom}, which is not an index into "
                                          r"the spec's species \['H', 'O'\] \(valid: 0 to 1\)")):
        model.forces_from_features(g, v, change(s))


@pytest.mark.parametrize("which, cut, message", [
    ("species", np.s_[:-1], r"`invariant` must have shape \(N, n_invariant\) = \(23, 14\) to match `species` "
                            r"\(23 atoms\) and the spec, got \(24, 14\)"),
    ("invariant", np.s_[:-1], r"`invariant` must have shape .* = \(24, 14\) .*got \(23, 14\)"),
    ("invariant", np.s_[:, :-1], r"`invariant` must have shape .* = \(24, 14\) .*got \(24, 13\)"),
    ("covariant", np.s_[:-1], r"`covariant` must have shape \(N, n_covariant, 3\) = \(24, 6, 3\) .*got \(23, 6, 3\)"),
    ("covariant", np.s_[:, :-1], r"`covariant` must have shape .* = \(24, 6, 3\) .*got \(24, 5, 3\)"),
    ("covariant", np.s_[..., :2], r"`covariant` must have shape .* = \(24, 6, 3\) .*got \(24, 6, 2\)"),
])
def test_forces_from_features_refuses_mismatched_shapes(model, water_feats, which, cut, message):
    feats = dict(zip(("invariant", "covariant", "species"), water_feats))
    feats[which] = feats[which][cut]
    with pytest.raises(ValueError, match=message):
        model.forces_from_features(**feats)


def test_forces_from_features_refuses_bad_species_dtype_and_rank(model, water_feats):
    g, v, s = water_feats
    with pytest.raises(TypeError, match="`species` must be an integer array .*got dtype float64"):
        model.forces_from_features(g, v, s.astype(np.float64))
    with pytest.raises(TypeError, match="got dtype bool"):
        model.forces_from_features(g, v, s.astype(bool))
    with pytest.raises(ValueError, match=r"`species` must have shape \(N,\), got \(24, 1\)"):
        model.forces_from_features(g, v, s[:, None])
    with pytest.raises(ValueError, match=r"`species` must have shape \(N,\), got \(\)"):
        model.forces_from_features(g, v, 1)


def test_forces_from_features_refuses_non_float_and_non_finite_features(model, water_feats):
    """Complex, string and bool features were cast silently (imaginary parts dropped, strings parsed, bools read
    as 0/1: forces 7 eV/Å off), NaN features gave NaN forces."""
    g, v, s = water_feats
    for bad, dtype in ((g + 5j, "complex"), (g.astype(str), "<U"), (g > 0.1, "bool"), (g.astype(object), "object")):
        with pytest.raises(TypeError, match=f"`invariant` must be a floating-point array, got dtype {dtype}"):
            model.forces_from_features(bad, v, s)
    with pytest.raises(TypeError, match="`covariant` must be a floating-point array, got dtype int64"):
        model.forces_from_features(g, v.astype(np.int64), s)
    g2 = g.copy()
    g2[5, 3] = np.nan
    with pytest.raises(ValueError, match="`invariant` holds NaN or inf at atom 5"):
        model.forces_from_features(g2, v, s)
    v2 = v.copy()
    v2[9, 1, 2] = -np.inf
    with pytest.raises(ValueError, match="`covariant` holds NaN or inf at atom 9"):
        model.forces_from_features(g, v2, s)


def test_forces_from_features_valid_inputs(model, water, water_feats):
    g, v, s = water_feats
    f = model.forces_from_features(g, v, s)
    np.testing.assert_allclose(f, model.forces(water), rtol=1e-4, atol=1e-5 * np.abs(f).max())
    for species in (s.astype(np.int64), s.astype(np.uint8), s.tolist()):
        np.testing.assert_array_equal(model.forces_from_features(g, v, species), f)
    np.testing.assert_array_equal(model.forces_from_features(g.tolist(), v.tolist(), s), f)
    empty = model.forces_from_features(g[:0], v[:0], s[:0])
    assert empty.shape == (0, 3)


def test_load_validates_intra_op_threads(model_path):
    with pytest.raises(ValueError, match=r"`intra_op_threads` must be an int >= 0 \(0: onnxruntime's default\), got -1"):
        ForceModel.load(model_path, intra_op_threads=-1)
    with pytest.raises(TypeError, match="`intra_op_threads` must be an int, got str '2'"):
        ForceModel.load(model_path, intra_op_threads="2")


def test_model_and_calculator_pickle_by_file_reference(model_path, water):
    """A model (and a Calculator holding one) pickles and deep-copies: the copy is loaded again from the
    same file with the same options and gives the same forces (onnxruntime sessions cannot be pickled)."""
    import copy
    import pickle

    from fastfeat.runtime import Calculator

    m = ForceModel.load(model_path, skin=0.4, intra_op_threads=2)
    back = pickle.loads(pickle.dumps(m))
    assert back is not m and back.path == m.path and back.skin == 0.4 and back.device == "cpu"
    assert back._intra_op_threads == 2 and back.spec == m.spec
    np.testing.assert_array_equal(back.forces(water), m.forces(water))
    calc = copy.deepcopy(Calculator(m))
    atoms = water.copy()
    atoms.calc = calc
    np.testing.assert_array_equal(atoms.get_forces(), m.forces(water))
    assert pickle.loads(pickle.dumps(ForceModel.pretrained("peo"))).path == ForceModel.pretrained("peo").path


def test_a_copy_refuses_a_model_file_rewritten_since_the_load(tmp_path, water):
    """A copy or an unpickled model loads its file again: once the file at that path was replaced (a new
    `fastfeat train --out` there) it silently became the other model (forces 2.2 eV/Å off); now it is refused,
    and a removed file is named as the copy's."""
    import copy
    import pickle
    import shutil

    from fastfeat.runtime import Calculator

    names = model_module.pretrained_names()
    if not {"li4p2o7", "li4p2o7-water"} <= set(names):
        pytest.skip("bundled li4p2o7 models not present")
    path = tmp_path / "model.onnx"
    shutil.copy(ForceModel.pretrained("li4p2o7").path, path)
    m = ForceModel.load(path)
    blob = pickle.dumps(m)
    atoms = water.copy()
    atoms.calc = Calculator(m)
    shutil.copy(ForceModel.pretrained("li4p2o7-water").path, path)
    for make in (lambda: pickle.loads(blob), lambda: copy.deepcopy(m), lambda: copy.deepcopy(atoms).calc.model):
        with pytest.raises(ModelLoadError, match=r"model\.onnx' changed since this model was loaded"):
            make()
    shutil.copy(ForceModel.pretrained("li4p2o7").path, path)  # the same bytes again: fine
    assert pickle.loads(blob).spec == m.spec
    path.unlink()
    with pytest.raises(FileNotFoundError, match="a copied or unpickled ForceModel .* loads its file again"):
        pickle.loads(blob)


def test_forces_keep_the_evaluators_of_alternating_systems(model, water):
    """Two structures alternated through one model (two calculators sharing it) rebuilt evaluator, buffers and
    neighbour list on every call; each now keeps its own, and the forces are those of a fresh model."""
    small = water[:12]
    ref_w, ref_s = ForceModel.load(model.path).forces(water), ForceModel.load(model.path).forces(small)
    m = ForceModel.load(model.path)
    for _ in range(3):
        np.testing.assert_allclose(m.forces(water), ref_w, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(m.forces(small), ref_s, rtol=1e-6, atol=1e-6)
    evs = m._local.evaluators
    assert len(evs) == 2 and all(ev.n_rebuilds == 1 for ev in evs), [ev.n_rebuilds for ev in evs]


def test_an_evaluator_pickles_as_a_new_evaluator_of_the_same_system(model, water):
    import copy
    import pickle

    ev = model.evaluator(water.numbers, water.cell.array, water.pbc)
    ref = ev(water.positions).copy()
    for twin in (pickle.loads(pickle.dumps(ev)), copy.deepcopy(ev)):
        assert twin is not ev and twin.same_system(water.numbers, water.cell.array, water.pbc)
        np.testing.assert_array_equal(twin(water.positions), ref)


def test_an_evaluator_in_use_by_another_thread_is_refused(model, water):
    """The featurizer's guard covered only the features: a second thread could run onnxruntime on the shared
    IOBinding and get the other thread's forces. The whole call is guarded now."""
    ev = model.evaluator(water.numbers, water.cell.array, water.pbc)
    ref = ev(water.positions).copy()
    with ev._busy:  # as while another thread is inside a call
        with pytest.raises(RuntimeError, match="force evaluator is being called by another thread.*its own"):
            ev(water.positions)
    np.testing.assert_array_equal(ev(water.positions), ref)


def test_model_returning_another_shape_than_declared_is_named(model_path, water, tmp_path):
    """A file whose declared output is (n_atoms, 3) but whose graph computes (n_atoms, K): every way of
    running it raises a RuntimeError naming the model, none returns the wrong array."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(model_path))
    last = proto.graph.node[-1]
    assert last.op_type == "ReduceSum"
    last.input[1] = "axis2"  # sum over the components instead of the vectors: (n, K) ...
    last.output[0] = "per_vector"
    proto.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "minus_one"))
    proto.graph.node.extend([  # ... reshaped through a computed shape, which shape inference cannot follow
        helper.make_node("Shape", ["species"], ["n"]),
        helper.make_node("Concat", ["n", "minus_one"], ["n_rest"], axis=0),
        helper.make_node("Reshape", ["per_vector", "n_rest"], ["forces"]),
    ])
    bad = tmp_path / "bad_output.onnx"
    onnx.save(proto, str(bad))
    m = ForceModel.load(bad)
    with pytest.raises(RuntimeError, match=r"returned `forces` of shape \(24, 6\) for 24 atoms.*contract"):
        m.forces_batch([water])
    with pytest.raises(RuntimeError, match=r"onnxruntime failed to run model .*bad_output.onnx.* on 24 atoms"):
        m.forces(water)


def test_relative_model_path_survives_a_change_of_directory(model_path, water, tmp_path, monkeypatch):
    """A model pickles as a reference to its file (an onnxruntime session cannot be pickled): the path it
    keeps is absolute, so copies made after a chdir load the same file."""
    import copy

    from fastfeat.runtime import Calculator

    monkeypatch.chdir(model_path.parent)
    m = ForceModel.load(model_path.name)
    assert m.path == str(model_path.resolve())
    calc = Calculator(m)
    monkeypatch.chdir(tmp_path)
    twin = copy.deepcopy(calc)
    np.testing.assert_array_equal(twin.model.forces(water), m.forces(water))


def test_folder_named_like_a_bundled_model_does_not_hide_it(tmp_path, monkeypatch):
    """`fastfeat md peo ...` in a folder holding a directory `peo` (e.g. a demo's --out) still means the
    bundled model and data set; a folder not named like one is reported as a folder."""
    from fastfeat.runtime._structures import bundled_dataset_names, load_structure

    if "peo" not in model_module.pretrained_names() or "peo" not in bundled_dataset_names():
        pytest.skip("bundled peo model or data set not present")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "peo").mkdir()
    (tmp_path / "other").mkdir()
    assert model_module.resolve_model("peo").path == ForceModel.pretrained("peo").path
    with pytest.raises(ModelLoadError, match="is a directory"):
        model_module.resolve_model("other")
    assert len(load_structure("peo")) == len(load_structure("peo:test"))
    with pytest.raises(ValueError, match="folder"):
        load_structure("other")
