"""A process forked after its parent ran the CPU kernels under GNU OpenMP: a RuntimeError saying what to do,
not a child that aborts and a multiprocessing pool that waits forever (fork is Linux's default start method)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import multiprocessing as mp
    import numba
    import fastfeat
    from ase.build import molecule

    spec = fastfeat.FeatureSpec.default(("H", "C", "O"))
    atoms = molecule("CH3CH2OH")
    atoms.center(3.0)
    ref = fastfeat.featurize(atoms, spec).invariant  # the parent runs the parallel kernels first

    def work(_):
        return fastfeat.featurize(atoms, spec).invariant

    if __name__ == "__main__":
        print("layer", numba.threading_layer(), flush=True)
        with mp.get_context("fork").Pool(1) as pool:
            try:
                out = pool.map_async(work, range(2)).get(timeout=90)
                print("ok", float(abs(out[0] - ref).max()))
            except mp.TimeoutError:
                print("hang")
            except RuntimeError as exc:
                print("error", exc)
''')


def _run(tmp_path, layer=None):
    path = tmp_path / "forked.py"
    path.write_text(SCRIPT)
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_forked_child_after_gnu_openmp_gets_a_clear_error(tmp_path):
    out = _run(tmp_path)
    if "layer omp" not in out:
        pytest.skip(f"Numba chose another threading layer here: {out.splitlines()[0]}")
    from numba.np.ufunc import omppool

    if omppool.openmp_vendor != "GNU":
        pytest.skip(f"OpenMP here is {omppool.openmp_vendor}'s, which survives fork")
    assert "error fastfeat's CPU kernels cannot run in a process forked" in out, out
    assert "'spawn'" in out and "NUMBA_THREADING_LAYER=workqueue" in out


def test_forked_child_under_workqueue_computes(tmp_path):
    """The advice holds: with the workqueue layer a forked child featurizes, equal to its parent."""
    out = _run(tmp_path, "workqueue")
    assert "layer workqueue" in out and "ok 0.0" in out, out
