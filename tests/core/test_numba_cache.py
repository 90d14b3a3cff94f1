"""fastfeat's Numba caches when the package folder and the user's cache folder are both unwritable
(a container under an arbitrary user id): compiling used to fail with "cannot cache function ...: no locator
available"; now the kernels are cached in a private temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# every writability probe (fastfeat's and Numba's both create a TemporaryFile) fails outside the private folder
UNWRITABLE = r"""
import os, sys, tempfile
_real = tempfile.TemporaryFile
def _probe(*args, dir=None, **kwargs):
    if dir is not None and "fastfeat-numba-" not in str(dir):
        raise PermissionError(13, "read-only (test)", str(dir))
    return _real(*args, dir=dir, **kwargs)
tempfile.TemporaryFile = _probe
"""

CODE = UNWRITABLE + r"""
import fastfeat
from ase.build import molecule
spec = fastfeat.FeatureSpec.default(("H", "C", "O"))
f = fastfeat.featurize(molecule("CH3CH2OH"), spec)
os.environ["NUMBA_NUM_THREADS"] = "1"  # Numba re-reads its settings at the next compile: the folder must hold
import fastfeat.runtime  # the runtime's kernel modules are decorated now, after that re-read
import numba
folder = numba.config.CACHE_DIR
n = sum(len(files) for _, _, files in os.walk(folder))
print("folder", folder, "env", os.environ.get("NUMBA_CACHE_DIR"), "files", n, "rows", f.invariant.shape[0])
"""


def _run(tmp_path, code, **env_extra):
    env = dict(os.environ, TMPDIR=str(tmp_path), NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_CACHE_DIR", None)
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_unwritable_defaults_get_a_private_temporary_cache(tmp_path):
    out = _run(tmp_path, CODE)
    folder = tmp_path / f"fastfeat-numba-{os.getuid()}"
    assert f"folder {folder} env {folder}" in out, out
    assert (folder.stat().st_mode & 0o077) == 0  # closed to other users
    n = int(out.split("files ")[1].split()[0])
    assert n > 0 and "rows 9" in out, out


def test_writable_defaults_and_a_users_cache_dir_are_left_alone(tmp_path):
    probe = "import os, numba, fastfeat._numba_cache as nc; " \
            "print('chosen', nc.ensure_writable_cache(os.path.join(os.path.dirname(nc.__file__), '_kernels')), " \
            "'config', numba.config.CACHE_DIR)"
    out = _run(tmp_path, probe)
    assert "chosen None config \n" in out or out.strip() == "chosen None config", out
    mine = tmp_path / "mine"
    out = _run(tmp_path, UNWRITABLE + probe, NUMBA_CACHE_DIR=str(mine))
    assert f"chosen None config {mine}" in out, out
    assert not list(tmp_path.glob("fastfeat-numba-*"))
