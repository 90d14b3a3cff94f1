"""Reading structure files (one place for every command and loader): clear errors, fast compressed text;
writing JSON that strict parsers accept.

``ase.io.read`` reads the formats; this adds what a command line needs around it: a missing path,
a folder, an empty file, a file ASE cannot parse and a file without structures each raise one
``FileNotFoundError`` / ``ValueError`` naming the file, instead of a traceback from inside ASE.
Compressed text (``.xz``, ``.gz``, ``.bz2``) of extxyz/xyz is decompressed once in memory: ASE's
extxyz reader seeks back and forth, and every seek on a compressed stream decompresses from the
start (minutes for a bundled data set).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import math
import os
from pathlib import Path

__all__ = ["read_structures", "check_output_path", "check_extxyz_path", "EXTXYZ_EXTENSIONS", "names_path",
           "MODELS_DIR", "bundled_model_names", "bundled_model_file", "json_ready", "json_text", "file_sha256"]

_OPENERS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


#: the names of files written as extended XYZ text (trajectories, generated data sets)
EXTXYZ_EXTENSIONS = (".extxyz", ".xyz")


def check_extxyz_path(path, what="output", allow_xz=False):
    """``path`` as a str if it ends in .extxyz or .xyz (any case; with ``allow_xz`` also followed by .xz, for
    writers that compress such names), else ValueError naming ``what``.

    The file is written as extended XYZ text; ``ase.io.read`` picks its reader from the extension,
    so e.g. a ``.traj`` file would not read back.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a file path, got {type(path).__name__}")
    text = os.fspath(path)
    name = text[:-3] if allow_xz and text.lower().endswith(".xz") else text
    if not name.lower().endswith(EXTXYZ_EXTENSIONS):
        ext = os.path.splitext(text)[1] or "no extension"
        endings = ".extxyz or .xyz" + (" (optionally followed by .xz)" if allow_xz else "")
        raise ValueError(
            f"{what} {text!r} must end in {endings}, got {ext}: it is written as extended XYZ "
            "text, and ASE reads a file in the format its extension names; nothing was run"
        )
    return text


def check_output_path(path, what="output"):
    """OSError naming ``what`` when ``path`` cannot be written: a folder, a folder that does not
    exist, no write permission. Leaves no trace: an existing file keeps its content (a checkpoint to
    resume from, a trajectory a failing call would otherwise truncate), a new one is tried and removed;
    ``None`` passes."""
    if path is None:
        return
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {what} {path!r}: it is a folder; nothing was run")
    if not os.path.isdir(parent):
        why = "is not a folder" if os.path.exists(parent) else "does not exist"
        raise FileNotFoundError(f"cannot write {what} {path!r}: directory {parent!r} {why}; nothing was run")
    exists = os.path.exists(path)
    try:  # by trying (permission bits do not tell for root, read-only mounts or sysfs)
        if exists:
            open(path, "a").close()  # append mode: the content stays
        else:
            open(path, "x").close()
            os.remove(path)
    except OSError as exc:
        where = path if exists else f"directory {parent!r}"
        raise PermissionError(f"cannot write {what} {path!r}: {where} is not writable ({exc.strerror}); "
                              "nothing was run") from None


def read_structures(path, index=":", format=None, what="structure file"):
    """Structures of a file that ``ase.io`` reads.

    Parameters
    ----------
    path : str or os.PathLike
    index : str, int or slice
        ``ase.io.read`` syntax; ``":"`` (default) reads every frame.
    format : str, optional
        ``ase.io`` format name; guessed from the file name when None (for a compressed file, from
        the name without the compression suffix).
    what : str
        How messages name the file (e.g. "`--data` file").

    Returns
    -------
    list of ase.Atoms (at least one) for a slice or ``":"``; one ase.Atoms for an integer index.

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    ValueError
        `path` is a folder or an empty file, ASE cannot read it, it holds no structures, or an
        integer `index` is out of range.
    """
    import ase.io
    from ase.io.formats import filetype

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder, not a structure file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path!r} is empty (no structures)")
    source, fmt = path, format
    stem, suffix = os.path.splitext(path)
    try:
        inner = (format or filetype(stem, read=False)) if suffix in _OPENERS else None
        if inner in ("extxyz", "xyz"):
            fmt = inner
            with _OPENERS[suffix](path, "rt", encoding="utf-8") as fh:
                source = io.StringIO(fh.read())
            if not source.getvalue().strip():
                source = None
        if source is not None:
            if isinstance(index, int) and index < 0:
                # ASE clamps a negative index past the first frame to frame 0: read the last -index frames
                # (a slice) and refuse when there are fewer
                tail = ase.io.read(source, index=slice(index, None), format=fmt)
                if len(tail) < -index:
                    raise IndexError(index)
                out = tail[0]
            else:
                out = ase.io.read(source, index=index, format=fmt)
    except (IndexError, StopIteration, AssertionError) as exc:
        # single-frame readers (VASP POSCAR) assert index 0 instead of raising IndexError
        if isinstance(index, int):
            raise ValueError(_frame_message(what, path, source, fmt, index)) from None
        if isinstance(exc, AssertionError):
            raise ValueError(f"cannot read {what} {path!r}: AssertionError: {exc}") from None
        raise ValueError(f"cannot read {what} {path!r}: no structure found") from None
    except Exception as exc:  # ASE raises many types (XYZError, ParseError, KeyError, UnicodeDecodeError, ...)
        raise ValueError(f"cannot read {what} {path!r}: {type(exc).__name__}: {exc}") from None
    if source is None:
        raise ValueError(f"{what} {path!r} is empty (no structures)")
    if isinstance(index, int):
        return out
    frames = list(out)
    if not frames:
        raise ValueError(f"{what} {path!r} holds no structures")
    return frames


def _frame_message(what, path, source, fmt, index):
    """Why frame `index` of a file is missing: the file has fewer frames, or none that ASE recognised
    (a text file that is no structure format at all reads as zero frames)."""
    import ase.io

    try:
        if hasattr(source, "seek"):
            source.seek(0)
        n = len(ase.io.read(source, index=":", format=fmt))
    except Exception:  # noqa: BLE001 - only the message depends on it
        n = 0
    if n == 0:
        return f"cannot read {what} {path!r}: ASE found no structure in it (is it a structure file?)"
    return f"{what} {path!r} has {n} frame{'s' if n != 1 else ''}, no frame {index}"


def read_spec_file(path, what="`--spec` file"):
    """The FeatureSpec in the JSON file ``path``, or one error naming ``what`` and the file.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        No such file; a folder.
    ValueError
        Not UTF-8 text, not FeatureSpec JSON (the spec's own message, after the file's name).
    """
    from ._spec import FeatureSpec

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a folder, not a FeatureSpec JSON file")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path!r} is not a text file (a FeatureSpec is JSON text)") from None
    try:
        return FeatureSpec.from_json(text)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{what} {path!r}: {str(exc).replace('`text` is not', 'not')}") from None


def names_path(text, bundled_names) -> bool:
    """True when ``text`` (a command-line argument that may name a bundled model or data set) is a
    path: an existing file, or an existing folder that is not one of ``bundled_names`` (the reader then
    says it is a folder). A folder that happens to be named like a bundled model or data set (say a
    demo's output folder ``peo``) does not hide it."""
    return os.path.isfile(text) or (os.path.exists(text) and text not in bundled_names)


#: folder of the bundled models (fastfeat/data/models/<name>.onnx)
MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"


def bundled_model_names() -> list:
    """Names of the bundled models present in this installation."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.stem for p in MODELS_DIR.glob("*.onnx"))


def bundled_model_file(text):
    """The model file a command-line argument names: ``text`` itself when it is a path (see :func:`names_path`),
    a bundled model's file when it is a bundled model's name, else None."""
    names = bundled_model_names()
    if names_path(text, names):
        return text
    if text in names:
        return str(MODELS_DIR / f"{text}.onnx")
    return None


def json_ready(obj):
    """``obj`` with every NaN or infinite float (Python or NumPy) replaced by None, NumPy scalars by
    Python numbers and tuples by lists: ``json.dumps`` would write NaN, Infinity, which is not JSON
    (strict parsers such as ``jq`` or JavaScript's ``JSON.parse`` reject it)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # a NumPy scalar or 0-d array
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj, **kwargs):
    """``json.dumps(json_ready(obj), allow_nan=False, **kwargs)``: undefined values written as null."""
    return json.dumps(json_ready(obj), allow_nan=False, **kwargs)


def file_sha256(path) -> str:
    """Hex SHA-256 of the bytes of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

