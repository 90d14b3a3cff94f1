"""STRUCTURE arguments: files (plain or compressed) and bundled data sets."""

from __future__ import annotations

import lzma

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from fastfeat._io import read_structures
from fastfeat.runtime._structures import bundled_dataset_names, load_structure

from conftest import random_water_box


def _frames():
    frames = []
    for s in range(3):
        a = random_water_box(seed=s)
        a.calc = SinglePointCalculator(a, forces=np.full((len(a), 3), float(s)))
        frames.append(a)
    return frames


def test_read_structures_plain_and_xz(tmp_path):
    frames = _frames()
    plain = tmp_path / "d.extxyz"
    ase.io.write(plain, frames)
    packed = tmp_path / "d.extxyz.xz"
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    for path in (plain, packed):
        got = read_structures(path)
        assert len(got) == 3
        for a, b in zip(got, frames):
            np.testing.assert_allclose(a.positions, b.positions)
            np.testing.assert_allclose(a.get_forces(), b.get_forces())


def test_load_structure_file_and_frame(tmp_path):
    frames = _frames()
    path = tmp_path / "d.extxyz"
    ase.io.write(path, frames)
    np.testing.assert_allclose(load_structure(str(path), 1).positions, frames[1].positions)
    with pytest.raises(ValueError, match="has 3 frames, no frame 7"):
        load_structure(str(path), 7)
    bad = tmp_path / "bad.extxyz"
    bad.write_text("not\na structure\n")
    with pytest.raises(ValueError, match="cannot read structure file"):
        load_structure(str(bad))
    with pytest.raises(FileNotFoundError, match="neither a file nor a bundled data set"):
        load_structure(str(tmp_path / "missing.xyz"))


@pytest.mark.skipif("peo" not in bundled_dataset_names(), reason="bundled peo data set not present")
def test_load_bundled_dataset_frame():
    atoms = load_structure("peo:test", 0)
    assert set(atoms.get_chemical_symbols()) == {"C", "H", "O"}
    assert atoms.pbc.all() and atoms.get_forces().shape == (len(atoms), 3)
    with pytest.raises(ValueError, match="frames, no frame 100000"):
        load_structure("peo:test", 100000)


@pytest.mark.skipif("peo" not in bundled_dataset_names(), reason="bundled peo data set not present")
def test_load_bundled_dataset_split_all():
    from fastfeat.runtime._structures import bundled_frames, split_loader

    frames = bundled_frames("peo", "all")
    if split_loader() is not None:
        parts = sum(len(bundled_frames("peo", s)) for s in ("train", "val", "test"))
        assert len(frames) == parts
    np.testing.assert_allclose(load_structure("peo:all", len(frames) - 1).positions, frames[-1].positions)
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'val', 'test', 'all'\], got 'tset'"):
        load_structure("peo:tset")


def test_command_headers_say_whether_the_structure_is_periodic(model_path, water_file, tmp_path, capsys):
    """A periodic system read from a plain .xyz (no cell) ran as a cluster with nothing said but extrapolation
    warnings; the md and relax headers now state the boundary conditions."""
    import ase.io
    from ase import Atoms

    from fastfeat.runtime import md_cli, relax_cli
    from fastfeat.runtime._structures import periodicity

    assert periodicity(Atoms("H", cell=[3, 3, 3], pbc=True)) == "periodic in x y z"
    assert periodicity(Atoms("H", cell=[3, 3, 3], pbc=[True, False, True])) == "periodic in x z"
    assert periodicity(Atoms("H")) == "no periodic axis: an isolated cluster"
    cluster = tmp_path / "cluster.xyz"
    ase.io.write(cluster, ase.io.read(water_file), format="xyz")  # plain xyz: the cell is lost
    assert md_cli.main([str(model_path), str(water_file), "--steps", "1"]) == 0
    assert ", periodic in x y z), 1 steps of 0.5 fs" in capsys.readouterr().err
    assert md_cli.main([str(model_path), str(cluster), "--steps", "1"]) == 0
    assert ", no periodic axis: an isolated cluster), 1 steps of 0.5 fs" in capsys.readouterr().err
    assert relax_cli.main([str(model_path), str(cluster), "--steps", "1"]) in (0, 1)
    assert ", no periodic axis: an isolated cluster), FIRE to fmax" in capsys.readouterr().err


def test_swapped_model_and_structure_arguments_are_named(model_path, water_file, capsys):
    """`fastfeat md STRUCTURE MODEL` said only "not an ONNX model" (and a model as STRUCTURE gave ASE's
    UnknownFileTypeError): both now say the model comes first."""
    from fastfeat.runtime import ForceModel, ModelLoadError, md_cli

    with pytest.raises(ValueError, match=r"is an ONNX model file, not a structure: the commands take the model first"):
        load_structure(str(model_path))
    with pytest.raises(ModelLoadError, match=r"not an ONNX model .*it looks like a structure file: the commands take the "
                                             r"model first, then the structure"):
        ForceModel.load(water_file)
    assert md_cli.main([str(water_file), str(model_path), "--steps", "1"]) == 2  # the structure is read first
    assert "is an ONNX model file, not a structure: the commands take the model first" in capsys.readouterr().err
