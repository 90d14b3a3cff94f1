"""Where Numba keeps fastfeat's compiled kernels (``cache=True``), when the default places are unwritable.

Numba writes a kernel's cache beside its source (``__pycache__`` in the installed package) or, when
that folder is read-only, in the user's cache folder (``~/.cache/numba``). In a container run under
an arbitrary user id, or as a system account, both can be unwritable, and Numba then refuses to
compile any ``cache=True`` function ("cannot cache function ...: no locator available").
:func:`ensure_writable_cache` runs before fastfeat's kernel modules are decorated (``fastfeat._kernels``
and the runtime's kernel modules call it first): in that case only, it sets ``NUMBA_CACHE_DIR`` (the
environment and ``numba.config``) to a private folder under the system's temporary folder. A
``NUMBA_CACHE_DIR`` the user set is always kept.
"""

from __future__ import annotations

import os
import stat
import tempfile

__all__ = ["ensure_writable_cache"]

def _writable(folder):
    """True if a file can be created in ``folder`` (made if missing)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def _private_temp_folder():
    """``$TMPDIR/fastfeat-numba-<uid>``, owned by this user and closed to others, or None."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = os.path.join(tempfile.gettempdir(), f"fastfeat-numba-{uid}")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != uid):
            return None  # someone else's folder (or a link) under that name: do not write compiled code there
    except OSError:
        return None
    return folder if _writable(folder) else None


def ensure_writable_cache(kernel_folder):
    """Point Numba's cache at a private temporary folder when neither of its default places is writable for
    the kernels of ``kernel_folder`` (the folder of the module about to decorate ``cache=True`` kernels: each
    kernel module calls this first with its own folder). Returns the folder chosen, or None when nothing was
    changed."""
    import numba

    if numba.config.CACHE_DIR:  # NUMBA_CACHE_DIR: the user's choice, or an earlier call's
        return None
    if _writable(os.path.join(kernel_folder, "__pycache__")):  # where Numba caches first
        return None
    try:
        from numba.misc.appdirs import AppDirs

        user_cache = AppDirs(appname="numba", appauthor=False).user_cache_dir
    except Exception:  # noqa: BLE001 -- a Numba without that module: check the usual place
        user_cache = os.path.join(os.path.expanduser("~"), ".cache", "numba")
    if _writable(user_cache):
        return None  # Numba's own fallback works
    folder = _private_temp_folder()
    if folder is not None:
        # the environment too: Numba re-reads it (and resets CACHE_DIR) whenever a NUMBA_* variable changed
        # since its last read, and worker processes inherit it
        os.environ["NUMBA_CACHE_DIR"] = folder
        numba.config.CACHE_DIR = folder
    return folder
