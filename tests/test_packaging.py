"""The wheel maps runtime/ and train/ to fastfeat.runtime / fastfeat.train and ships the bundled data."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"wheel build failed:\n{proc.stdout}\n{proc.stderr}")
    (whl,) = out.glob("fastfeat-*.whl")
    return zipfile.ZipFile(whl).namelist()


def test_wheel_layout(wheel):
    names = set(wheel)
    for required in ("fastfeat/__init__.py", "fastfeat/runtime/__init__.py", "fastfeat/train/__init__.py",
                     "fastfeat/train/datasets/__init__.py", "fastfeat/_kernels/features_cpu.py"):
        assert required in names, required
    top = {n.split("/")[0] for n in names}
    assert "runtime" not in top and "train" not in top, sorted(top)


def test_wheel_ships_bundled_data(wheel):
    data_dir = ROOT / "fastfeat" / "data"
    bundled = [p.relative_to(ROOT).as_posix() for p in data_dir.rglob("*") if p.is_file() and p.suffix in (".xz", ".onnx")]
    if not bundled:
        pytest.skip("no bundled data in this checkout")
    missing = [b for b in bundled if b not in wheel]
    assert not missing, missing


def test_editable_install_resolves_subpackages():
    import fastfeat.runtime
    import fastfeat.train

    assert Path(fastfeat.runtime.__file__).parent == ROOT / "runtime"
    assert Path(fastfeat.train.__file__).parent == ROOT / "train"
