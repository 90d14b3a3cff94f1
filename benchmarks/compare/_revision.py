"""One kernel module of fastfeat as it was at a git revision, for the interleaved A/B scripts
(kernel_ab: the feature kernels, list_ab: the neighbour-list kernels)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_kernel_revision(rev, path, folder):
    """Import `path` (e.g. ``fastfeat/_kernels/features_cpu.py``) as it is at git revision `rev`.

    The source (``git show``) is written into `folder` and imported under its own module name beside
    the working tree's module. Its relative imports of sibling kernel modules are made absolute (they
    resolve to the working tree's siblings), and its kernels compile without the on-disk cache (a
    temporary file: nothing to reuse).
    """
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    package = ".".join(Path(path).parent.parts)
    src = re.sub(r"^from \.(\w)", rf"from {package}.\1", src, flags=re.M).replace("cache=True", "cache=False")
    stem = Path(path).stem
    target = Path(folder) / f"{stem}_{rev.replace('~', '_').replace('^', '_').replace('/', '_')}.py"
    target.write_text(src)
    spec = importlib.util.spec_from_file_location(target.stem, target)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def positions_layout(kernel, poss_cn):
    """Bin-ordered positions `poss_cn` (3, N) in the layout a cell-list kernel of some revision takes:
    as they are, or as rows (N, 3) for kernels from before the columns (first parameter ``poss_nc``)."""
    import inspect

    import numpy as np

    first = next(iter(inspect.signature(kernel.py_func).parameters))
    return np.ascontiguousarray(poss_cn.T) if first == "poss_nc" else poss_cn
