"""Numba compile time of fastfeat's CPU kernels, measured apart from every timing.

Three fresh processes share one empty, private NUMBA_CACHE_DIR:
1. cold: nothing cached, the first featurize compiles every kernel (and writes the cache);
2. cached: a new process loads the kernels from the on-disk cache (``cache=True``);
then, in each, the second (warm) call on the same 99-atom water box. Compile time = first call
- warm call in the cold process; cache-load time = the same in the cached process. Import time
of fastfeat is reported too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.compare._harness import main_for


def child():
    """Print JSON: import time, first-call and warm-call time of featurize and neighbor_list."""
    t0 = time.perf_counter()
    import fastfeat

    t_import = time.perf_counter() - t0
    from benchmarks.common import ani1x_spec, water_box

    atoms = water_box(33)
    spec = ani1x_spec()
    out = {"import_s": t_import}
    t0 = time.perf_counter()
    fastfeat.featurize(atoms, spec)
    out["featurize_first_s"] = time.perf_counter() - t0
    warm = []
    for _ in range(5):
        t0 = time.perf_counter()
        fastfeat.featurize(atoms, spec)
        warm.append(time.perf_counter() - t0)
    out["featurize_warm_s"] = sorted(warm)[len(warm) // 2]
    print(json.dumps(out))


def _spawn(cache_dir):
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    env["PYTHONPATH"] = os.pathsep.join([p for p in (os.getcwd(), env.get("PYTHONPATH")) if p])
    res = subprocess.run([sys.executable, "-c", "from benchmarks.compare.compile_time import child; child()"],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(quick=False, threads=1):
    with tempfile.TemporaryDirectory(prefix="fastfeat-numba-cache-") as cache_dir:
        cold = _spawn(cache_dir)
        cached = _spawn(cache_dir)
    compile_s = cold["featurize_first_s"] - cold["featurize_warm_s"]
    load_s = cached["featurize_first_s"] - cached["featurize_warm_s"]
    notes = [
        f"cold (empty cache): first featurize {cold['featurize_first_s']:.2f} s -> JIT compile ≈ {compile_s:.2f} s "
        f"(neighbour-list + feature kernels, {threads} thread(s))",
        f"cached (cache=True, fresh process): first featurize {cached['featurize_first_s']:.3f} s -> cache load ≈ {load_s:.3f} s",
        f"import fastfeat: {cold['import_s']:.2f} s (cold) / {cached['import_s']:.2f} s; warm featurize of 99 atoms "
        f"{cached['featurize_warm_s'] * 1e3:.1f} ms",
    ]
    return {
        "name": "compile",
        "title": "Numba compile time (not part of any timing)",
        "rows": [],
        "ratios": [],
        "compile": {"cold": cold, "cached": cached, "compile_s": compile_s, "cache_load_s": load_s},
        "notes": notes,
    }


def main(argv=None):
    return main_for(run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
