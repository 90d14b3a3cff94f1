"""Structure files: fastfeat._io.read_structures (every command's reader) and `fastfeat featurize`."""

import lzma

import ase.build
import ase.io
import numpy as np
import pytest

import fastfeat
from fastfeat._io import read_structures
from fastfeat.cli import main as cli


@pytest.fixture
def files(tmp_path):
    frames = [ase.build.molecule("H2O"), ase.build.molecule("CH4")]
    ase.io.write(tmp_path / "ok.extxyz", frames)
    (tmp_path / "ok.extxyz.xz").write_bytes(lzma.compress((tmp_path / "ok.extxyz").read_bytes()))
    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "blank.extxyz.xz").write_bytes(lzma.compress(b"\n\n"))
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "truncated.extxyz").write_text("3\n\nH 0 0 0\n")
    (tmp_path / "folder").mkdir()
    return tmp_path


def test_reads_plain_and_compressed_frames(files):
    for name in ("ok.extxyz", "ok.extxyz.xz"):
        frames = read_structures(files / name)
        assert [a.get_chemical_formula() for a in frames] == ["H2O", "CH4"]
    assert read_structures(files / "ok.extxyz.xz", index=1).get_chemical_formula() == "CH4"
    assert len(read_structures(files / "ok.extxyz", index="1:")) == 1


@pytest.mark.parametrize("name, error, match", [
    ("missing.extxyz", FileNotFoundError, "does not exist"),
    ("folder", ValueError, "is a folder"),
    ("empty.extxyz", ValueError, "is empty"),
    ("blank.extxyz.xz", ValueError, "is empty"),
    ("notes.txt", ValueError, "cannot read .*notes.txt"),
    ("truncated.extxyz", ValueError, "cannot read .*truncated.extxyz.*expected 3"),
])
def test_bad_files_raise_one_clear_error(files, name, error, match):
    with pytest.raises(error, match=match):
        read_structures(files / name, what="`--data` file")


def test_frame_out_of_range(files, tmp_path):
    n = len(read_structures(files / "ok.extxyz"))
    with pytest.raises(ValueError, match=rf"has {n} frames, no frame 5"):
        read_structures(files / "ok.extxyz", index=5)
    # a text file that is no structure format: ASE reads zero frames, which is what the message says
    notes = tmp_path / "notes.md"
    notes.write_text("# notes\n\nnot a structure\n")
    with pytest.raises(ValueError, match="ASE found no structure in it"):
        read_structures(notes, index=0)


def test_negative_frame_counts_from_the_end_and_is_refused_past_the_first(files, tmp_path):
    """ASE clamps a negative index past the first frame to frame 0; a negative `--frame` too large must be
    refused, not read as frame 0 (plain and compressed files)."""
    for name in ("ok.extxyz", "ok.extxyz.xz"):
        assert read_structures(files / name, index=-1).get_chemical_formula() == "CH4"
        assert read_structures(files / name, index=-2).get_chemical_formula() == "H2O"
        for index in (-3, -100):
            with pytest.raises(ValueError, match=rf"has 2 frames, no frame {index}"):
                read_structures(files / name, index=index)


def test_single_frame_formats_refuse_a_second_frame_clearly(tmp_path):
    """VASP's reader asserts on an index other than 0 (an AssertionError without a message)."""
    poscar = tmp_path / "POSCAR"
    ase.io.write(poscar, ase.build.bulk("Cu"), format="vasp")
    assert len(read_structures(poscar, index=-1)) == 1
    for index in (1, -2):
        with pytest.raises(ValueError, match=rf"has 1 frame, no frame {index}"):
            read_structures(poscar, index=index)


def test_featurize_cli_adds_npz_suffix_and_rejects_bad_files(files, capsys):
    spec = fastfeat.FeatureSpec.default(("H", "C", "O"))
    (files / "spec.json").write_text(spec.to_json())
    args = ["--spec", str(files / "spec.json"), "--out"]
    assert cli(["featurize", str(files / "ok.extxyz"), *args, str(files / "feats")]) == 0
    assert f"wrote {files / 'feats.npz'}:" in capsys.readouterr().out
    with np.load(files / "feats.npz") as z:
        assert z["offsets"].tolist() == [0, 3, 8]
    for name, match in [("empty.extxyz", "is empty"), ("notes.txt", "cannot read"), ("folder", "is a folder"),
                        ("truncated.extxyz", "cannot read")]:
        assert cli(["featurize", str(files / name), *args, str(files / "x.npz")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastfeat featurize: error:") and match in err and "Traceback" not in err
    # an output folder that does not exist is refused before any work
    assert cli(["featurize", str(files / "ok.extxyz"), *args, str(files / "nowhere" / "x.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a file that is not an ONNX model
    assert cli(["featurize", str(files / "ok.extxyz"), "--model", str(files / "notes.txt"), "--out",
                str(files / "x.npz")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_featurize_cli_spec_file_errors_name_the_file(files, capsys):
    """A binary file, a folder or bad JSON given as `--spec`: one line naming the option and the file (it was a
    bare UnicodeDecodeError, errno text, or a message about an internal parameter `text`)."""
    (files / "binary.json").write_bytes(b"\xb9\xff\x00")
    (files / "bad.json").write_text('{"species":')
    for name, match in [("binary.json", "is not a text file"), ("folder", "is a folder"), ("bad.json", "not valid FeatureSpec JSON"),
                        ("missing.json", "does not exist")]:
        assert cli(["featurize", str(files / "ok.extxyz"), "--spec", str(files / name), "--out", str(files / "x.npz")]) == 2
        err = capsys.readouterr().err
        assert f"`--spec` file {str(files / name)!r}" in err and match in err and "`text`" not in err, err
    assert not (files / "x.npz").exists()


def test_featurize_cli_bundled_model_not_hidden_by_a_folder_of_its_name(files, monkeypatch, capsys):
    """`--model peo` names the bundled model even where the working folder holds a folder `peo` (say a demo's
    output), as in `fastfeat md`."""
    monkeypatch.chdir(files)
    (files / "peo").mkdir()
    assert cli(["featurize", "ok.extxyz", "--model", "peo", "--out", "feats.npz"]) == 0
    with np.load(files / "feats.npz") as z:
        assert fastfeat.FeatureSpec.from_json(str(z["spec"])).species == ("H", "C", "O")


def test_json_text_writes_undefined_values_as_null():
    """NaN and inf (Python or NumPy, nested anywhere) become null: json.dumps alone writes NaN / Infinity,
    which strict parsers reject."""
    import json

    from fastfeat._io import json_ready, json_text

    obj = {"a": float("nan"), "b": [1.5, np.float32("inf"), (np.float64("-inf"), 2)], "c": {"d": np.int64(3)},
           "e": np.float64(0.25), "f": None, "g": "x"}
    text = json_text(obj, indent=1)

    def refuse(token):
        raise ValueError(token)

    back = json.loads(text, parse_constant=refuse)
    assert back == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": 3}, "e": 0.25, "f": None, "g": "x"}
    assert json_ready(np.float32(1.0)) == 1.0 and type(json_ready(np.float32(1.0))) is float
