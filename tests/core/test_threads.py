"""The public CPU entries and Python threads: Numba's workqueue layer, and a Featurizer shared by threads."""

import copy
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
from ase.build import molecule

import fastfeat

SPEC = fastfeat.FeatureSpec.default(("H", "C", "O"))


def _water_box(n=3, seed=0):
    from ase import Atoms

    rng = np.random.default_rng(seed)
    atoms = Atoms()
    for i in range(n):
        for j in range(n):
            for k in range(n):
                m = molecule("H2O")
                m.rotate(rng.uniform(0, 360), rng.normal(size=3))
                m.translate(np.array([i, j, k]) * 3.1 + 1.0)
                atoms += m
    atoms.cell = np.eye(3) * 3.1 * n
    atoms.pbc = True
    return atoms


def test_featurize_and_neighbor_list_from_threads_under_the_workqueue_layer():
    """Numba's workqueue layer (the README's advice for forked workers) aborted the process ("Concurrent access
    has been detected") when two threads called fastfeat.featurize or neighbor_list together; only ForceModel
    serialised its calls. Now every public CPU entry does, and the results equal the serial ones."""
    code = """
import threading, numpy as np, numba, fastfeat
from ase.build import molecule
from tests.core.test_threads import SPEC, _water_box
systems = [_water_box(3, s) for s in range(3)] + [molecule("CH3CH2OH")]
ref_f = [fastfeat.featurize(a, SPEC) for a in systems]
ref_n = [fastfeat.neighbor_list(a.positions, a.cell.array, a.pbc, 4.0).i.size for a in systems]
assert numba.threading_layer() == "workqueue", numba.threading_layer()
bad, errors = [], []
def work(t):
    fz = fastfeat.Featurizer(SPEC, skin=0.5)  # one per thread
    try:
        for k in range(40):
            s = (k + t) % len(systems)
            a = systems[s]
            f = fastfeat.featurize(a, SPEC)
            g, v = fz(a.positions, a.numbers, a.cell.array, a.pbc)
            n = fastfeat.neighbor_list(a.positions, a.cell.array, a.pbc, 4.0).i.size
            if not (np.array_equal(f.invariant, ref_f[s].invariant) and n == ref_n[s]
                    and np.allclose(g, ref_f[s].invariant, rtol=1e-5, atol=1e-6)):
                bad.append((t, k))
    except Exception as exc:
        errors.append(repr(exc))
ts = [threading.Thread(target=work, args=(t,)) for t in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
assert not bad and not errors, (bad, errors)
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                          cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_a_featurizer_in_use_by_another_thread_is_refused():
    """One Featurizer called by two threads at once gave wrong features or errors naming garbage atom indices
    (its neighbour list and buffers are per call); such a call is now refused, and the object stays usable."""
    a = _water_box(2)
    fz = fastfeat.Featurizer(SPEC, skin=0.5)
    ref = fz(a.positions, a.numbers, a.cell.array, a.pbc)[0].copy()
    fz._busy._lock.acquire()  # as while another thread is inside a call
    try:
        with pytest.raises(RuntimeError, match="being called by another thread.*each thread needs its own"):
            fz(a.positions, a.numbers, a.cell.array, a.pbc)
        with pytest.raises(RuntimeError, match="being called by another thread"):
            fz._call_same_system(a.positions, a.numbers, a.cell.array, a.pbc)  # the MD step's path
    finally:
        fz._busy._lock.release()
    np.testing.assert_array_equal(fz(a.positions, a.numbers, a.cell.array, a.pbc)[0], ref)
    # copies get a lock of their own and compute the same
    for other in (pickle.loads(pickle.dumps(fz)), copy.deepcopy(fz)):
        np.testing.assert_array_equal(other(a.positions, a.numbers, a.cell.array, a.pbc)[0], ref)


def test_a_child_forked_while_another_thread_featurizes_can_featurize():
    """Under the workqueue layer a child forked while another thread of the parent held the kernels' lock
    inherited the lock held and waited for it forever; the child now starts with a free lock."""
    code = """
import os, signal, threading, time, numpy as np, fastfeat
from fastfeat import _threads
from ase.build import molecule
spec = fastfeat.FeatureSpec.default(("H", "C", "O"))
a = molecule("CH3CH2OH")
ref = fastfeat.featurize(a, spec).invariant
inside, leave = threading.Event(), threading.Event()
def hold():  # a thread of the parent inside a CPU entry when the fork happens
    with _threads.cpu_kernels():
        inside.set(); leave.wait(30)
t = threading.Thread(target=hold); t.start(); inside.wait(30)
pid = os.fork()
if pid == 0:
    signal.alarm(60)
    ok = np.array_equal(fastfeat.featurize(a, spec).invariant, ref)
    os._exit(0 if ok else 3)
leave.set(); t.join()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("child 0"), proc.stdout + proc.stderr

