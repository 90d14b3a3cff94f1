"""Device detection: which arrays live on a GPU, whether CUDA is usable."""

from __future__ import annotations

import os
import platform

__all__ = ["is_device_array", "cuda_available", "require_cuda", "available_host_memory", "cpu_description"]

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


def cpu_description(cpuinfo="/proc/cpuinfo") -> str:
    """The CPU's model name with what sets the speed of the vectorised kernels: family / model, clock,
    the widest vector instructions and LLVM's name for the host CPU (what Numba compiles for), e.g.
    ``"AMD EPYC (family 25 model 1, 2445 MHz, AVX2, LLVM znver3)"``; virtual machines that report
    one model name differ in all of these. For speed figures (benchmarks, the demo report)."""
    facts = {}
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if not line.strip():
                    if facts:
                        break  # the first processor is enough
                    continue
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "cpu MHz", "flags") and key not in facts:
                    facts[key] = value.strip()
    except OSError:
        pass
    name = facts.get("model name") or platform.processor() or "unknown CPU"
    details = []
    if "cpu family" in facts and "model" in facts:
        details.append(f"family {facts['cpu family']} model {facts['model']}")
    try:
        details.append(f"{float(facts['cpu MHz']):.0f} MHz")
    except (KeyError, ValueError):
        pass
    flags = set(facts.get("flags", "").split())
    if flags:
        details.append("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2")
    try:
        import llvmlite.binding as llvm

        details.append(f"LLVM {llvm.get_host_cpu_name()}")
    except Exception:  # noqa: BLE001 - a fact for a report only
        pass
    return f"{name} ({', '.join(details)})" if details else name
