"""Numba kernels (CPU and CUDA); their ``cache=True`` needs a writable cache folder, checked first."""

import os

from .._numba_cache import ensure_writable_cache

ensure_writable_cache(os.path.dirname(os.path.abspath(__file__)))
