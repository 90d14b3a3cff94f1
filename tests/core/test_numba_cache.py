"""fastfeat's Numba caches when the package folder and the user's cache folder are both unwritable
(a container under an arbitrary user id): compiling used to fail with "cannot cache function ...: no locator
available"; now the kernels are cached in a private temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = r"""
import importlib.util, os, sys
import numba
spec = importlib.util.spec_from_file_location("probe_cache", os.path.join({root!r}, "fastfeat", "_numba_cache.py"))
nc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nc)
unwritable = sys.argv[1] == "none"
real = nc._writable
nc._writable = lambda folder: (not unwritable) and real(folder) if "fastfeat-numba-" not in folder else real(folder)
chosen = nc.ensure_writable_cache()
print("chosen", chosen)
print("config", numba.config.CACHE_DIR)
if chosen:
    # what fastfeat/__init__ does first: afterwards the kernels compile and cache there
    import fastfeat
    from ase.build import molecule
    f = fastfeat.featurize(molecule("CH3CH2OH"), fastfeat.FeatureSpec.default(("H", "C", "O")))
    n = sum(len(files) for _, _, files in os.walk(chosen))
    print("cached files", n, "rows", f.invariant.shape[0])
"""


def _run(tmp_path, mode, **env_extra):
    env = dict(os.environ, TMPDIR=str(tmp_path), NUMBA_NUM_THREADS="1", **env_extra)
    env.pop("NUMBA_CACHE_DIR", None)
    env.update({k: v for k, v in env_extra.items()})
    proc = subprocess.run([sys.executable, "-c", CODE.format(root=str(ROOT)), mode], capture_output=True, text=True,
                          timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_unwritable_defaults_get_a_private_temporary_cache(tmp_path):
    out = _run(tmp_path, "none")
    folder = tmp_path / f"fastfeat-numba-{os.getuid()}"
    assert f"chosen {folder}" in out and f"config {folder}" in out, out
    assert (folder.stat().st_mode & 0o077) == 0  # closed to other users
    n = int(out.split("cached files ")[1].split()[0])
    assert n > 0 and "rows 9" in out, out


def test_writable_defaults_and_a_users_cache_dir_are_left_alone(tmp_path):
    out = _run(tmp_path, "all")
    assert "chosen None" in out, out
    mine = tmp_path / "mine"
    out = _run(tmp_path, "none", NUMBA_CACHE_DIR=str(mine))
    assert "chosen None" in out and f"config {mine}" in out, out
