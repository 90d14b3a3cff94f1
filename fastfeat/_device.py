"""Device detection: which arrays live on a GPU, whether CUDA is usable."""

from __future__ import annotations

import os

__all__ = ["is_device_array", "cuda_available", "require_cuda", "available_host_memory"]

_CUDA_STATE = None


def is_device_array(x) -> bool:
    """True for CuPy arrays and any object exposing ``__cuda_array_interface__``."""
    return hasattr(x, "__cuda_array_interface__")


def cuda_available() -> tuple[bool, str]:
    """(usable, reason). Never hangs: numba's driver probe returns or raises."""
    global _CUDA_STATE
    if _CUDA_STATE is not None:
        return _CUDA_STATE
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        _CUDA_STATE = (True, "Numba CUDA simulator")
        return _CUDA_STATE
    try:
        from . import _compat  # noqa: F401  (before numba.cuda)
        from numba import cuda
    except Exception as exc:  # numba-cuda missing or broken
        _CUDA_STATE = (False, f"numba.cuda cannot be imported ({exc}); install fastfeat[gpu]")
        return _CUDA_STATE
    try:
        ok = cuda.is_available()
        reason = "" if ok else "no CUDA GPU or driver was found (numba.cuda.is_available() is False)"
    except Exception as exc:
        ok, reason = False, f"the CUDA driver could not be initialised ({exc})"
    _CUDA_STATE = (ok, reason)
    return _CUDA_STATE


def require_cuda():
    ok, reason = cuda_available()
    if not ok:
        raise RuntimeError(f"device='cuda' was requested but CUDA is not usable: {reason}")


def available_host_memory():
    """Bytes of available host memory, or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
