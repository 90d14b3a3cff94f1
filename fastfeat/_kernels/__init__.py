"""Numba kernels (CPU and CUDA); their ``cache=True`` needs a writable cache folder, checked first."""

from .._numba_cache import ensure_writable_cache

ensure_writable_cache()
