"""Helpers of the asv suite: the structure builders of benchmarks/common.py, device list, JIT warm-up.

asv imports this folder as a package named ``benchmarks``, which hides the repository-level
``benchmarks`` folder, so benchmarks/common.py is loaded by its path.
"""

import importlib.util
import os
import pathlib
import sys

_COMMON = pathlib.Path(__file__).resolve().parents[1] / "common.py"
_NAME = "fastfeat_benchmarks_common"


def _load_common():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _COMMON)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


common = _load_common()

#: Nominal atom counts of the params (water boxes of about that many atoms).
ATOM_COUNTS = [100, 1000, 10000, 100000]


def devices():
    """["cpu"], plus "cuda" when fastfeat can use a CUDA GPU (FASTFEAT_BENCH_DEVICES overrides)."""
    forced = os.environ.get("FASTFEAT_BENCH_DEVICES")
    if forced:
        return [d.strip() for d in forced.split(",") if d.strip()]
    from fastfeat import _device

    ok, _ = _device.cuda_available()
    return ["cpu", "cuda"] if ok else ["cpu"]


def to_device(array, device):
    """NumPy array on the CPU, CuPy array on "cuda"."""
    if device == "cuda":
        import cupy

        return cupy.asarray(array)
    return array


def synchronize(device):
    """Wait for queued GPU work so that asv times the whole computation."""
    if device == "cuda":
        from numba import cuda

        cuda.synchronize()
