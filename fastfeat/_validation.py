"""All argument checking of the public API, in one place.

Kernels check nothing; every public function calls these first. Messages name
the argument, the expectation and what was received.
"""

from __future__ import annotations

import math
import numbers as _numbers

import numpy as np

from ._elements import SYMBOLS

__all__ = [
    "check_positions",
    "check_cell",
    "check_pbc",
    "check_cutoff",
    "check_int",
    "check_number",
    "check_positive",
    "check_skin",
    "check_dtype",
    "check_device",
    "species_index",
    "check_feature_arrays",
    "MAX_ATOMS",
]

#: Structures larger than this are refused before anything is allocated.
MAX_ATOMS = 500_000_000


def _shape(x):
    return tuple(getattr(x, "shape", np.shape(x)))


def check_dtype(dtype):
    """Normalise a requested float dtype (float32 or float64)."""
    if dtype is None:  # np.dtype(None) is float64: a None that slipped through would pick a precision
        raise TypeError("`dtype` must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"`dtype` must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"`dtype` must be float32 or float64, got {dt}")
    return dt


def check_device(device):
    if not isinstance(device, str):
        raise TypeError(f"`device` must be 'cpu' or 'cuda', got {type(device).__name__}")
    dev = device.lower()
    if dev.startswith("cuda:"):
        index = dev[5:]
        if not index.isdigit():
            raise ValueError(f"`device` must be 'cpu', 'cuda' or 'cuda:0', got {device!r}")
        if int(index) != 0:
            # the kernels run in the current Numba/CuPy context and onnxruntime on device_id 0: the first visible
            # GPU; serving another index would compute on device 0 while the name said otherwise
            raise ValueError(f"`device` {device!r}: fastfeat runs on the first visible GPU ('cuda' or 'cuda:0'); "
                             f"to use GPU {int(index)}, make it the first visible one: CUDA_VISIBLE_DEVICES={int(index)}")
        dev = "cuda"
    if dev not in ("cpu", "cuda"):
        raise ValueError(f"`device` must be 'cpu' or 'cuda', got {device!r}")
    return dev


def check_positions(positions, dtype=None, name="positions"):
    """Return a C-contiguous (N, 3) float array of finite positions (Å).

    Integer, boolean, complex and object arrays are refused (TypeError): a
    silent cast of integer coordinates hides unit or indexing mistakes.
    Fortran-ordered or strided arrays are copied to C order.
    """
    if positions is None:
        raise TypeError(f"`{name}` is required, got None")
    if hasattr(positions, "positions") and hasattr(positions, "cell"):
        raise TypeError(f"`{name}` must be an (N, 3) array, got {type(positions).__name__}; for an ase.Atoms pass "
                        "atoms.positions (and atoms.cell.array, atoms.pbc)")
    if not isinstance(positions, np.ndarray):
        try:
            positions = np.asarray(positions)
        except (TypeError, ValueError):
            raise TypeError(f"`{name}` must be an array of shape (N, 3), got {type(positions).__name__}") from None
    if positions.dtype.kind != "f":
        raise TypeError(f"`{name}` must be a floating-point array (float32 or float64), got dtype {positions.dtype}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"`{name}` must have shape (N, 3), got {positions.shape}")
    if positions.shape[0] > MAX_ATOMS:
        raise MemoryError(
            f"`{name}` has {positions.shape[0]} atoms, more than fastfeat handles in one call ({MAX_ATOMS}); "
            "split the structure"
        )
    out_dtype = positions.dtype if dtype is None else dtype
    if out_dtype not in (np.float32, np.float64):
        out_dtype = np.float64
    if positions.size and not np.isfinite(positions).all():  # on the input, so the message is dtype-independent
        bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise ValueError(f"`{name}` must be finite, got {positions[bad].tolist()} (NaN or inf) for atom {bad}")
    with np.errstate(over="ignore"):  # reported below
        out = np.ascontiguousarray(positions, dtype=out_dtype)
    if out.dtype != positions.dtype and out.size and not np.isfinite(out).all():
        bad = int(np.argwhere(~np.isfinite(out))[0, 0])
        raise ValueError(f"`{name}` of atom {bad}, {positions[bad].tolist()}, overflows {out.dtype}")
    return out


def check_pbc(pbc):
    """Return a (3,) bool array from a bool or a sequence of 3 bools."""
    if pbc is None:
        return np.zeros(3, dtype=bool)
    if isinstance(pbc, (bool, np.bool_)):
        return np.full(3, bool(pbc))
    if isinstance(pbc, (int, np.integer)) and pbc in (0, 1):  # as ASE accepts
        return np.full(3, bool(pbc))
    arr = np.asarray(pbc)
    if arr.shape != (3,):
        shown = repr(pbc) if arr.size <= 6 else f"an array of shape {arr.shape}"
        raise ValueError(f"`pbc` must be a bool or a sequence of 3 bools, got {shown}")
    if arr.dtype != bool:
        if arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all():
            arr = arr.astype(bool)
        else:
            raise TypeError(f"`pbc` must contain booleans, got {pbc!r} (dtype {arr.dtype})")
    return arr.astype(bool)


def check_cell(cell, pbc):
    """Return a (3, 3) float64 cell (rows are cell vectors, Å).

    A cell with a periodic axis must be non-singular; the vectors along
    non-periodic axes are ignored (they may be zero). Left-handed cells are
    valid.
    """
    if cell is None:
        cell = np.zeros((3, 3))
    try:
        cell = np.asarray(cell)
    except (TypeError, ValueError):
        raise TypeError(f"`cell` must be a (3, 3) array, got {type(cell).__name__}") from None
    if cell.dtype.kind not in "fiu":
        raise TypeError(f"`cell` must be a numeric array, got dtype {cell.dtype}")
    if cell.shape == (3,):
        raise ValueError(f"`cell` must have shape (3, 3), got {cell.shape} (use np.diag(lengths) for an orthorhombic cell)")
    if cell.shape != (3, 3):
        raise ValueError(f"`cell` must have shape (3, 3), got {cell.shape}")
    cell = np.array(cell, dtype=np.float64, order="C")
    if not np.isfinite(cell).all():
        raise ValueError(f"`cell` must be finite, got {cell.tolist()}")
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        for ax in np.flatnonzero(pbc):
            if lengths[ax] < 1e-8:
                raise ValueError(f"`cell` vector {ax} has zero length but axis {ax} is periodic; got cell {cell.tolist()}")
        # volume spanned by the periodic vectors must be non-zero
        per = cell[pbc] / lengths[pbc, None]  # unit vectors: no overflow for any finite cell
        if abs(np.linalg.det(per @ per.T)) <= 1e-12:
            raise ValueError(
                f"`cell` is singular (zero volume along its periodic axes {np.flatnonzero(pbc).tolist()}), "
                f"got {cell.tolist()}"
            )
    return cell


def check_int(value, name, minimum=None, note="") -> int:
    """``value`` as an int: TypeError unless it is an int (NumPy integers too; bools refused), ValueError
    below ``minimum``. ``name`` is shown as given (a keyword "`steps`" or an option "`--frames`"); ``note``
    follows the bound in the message (what the bound is for)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{note}, got {int(value)}")
    return int(value)


def check_skin(skin) -> float:
    """``skin`` (Å) as a float; ValueError unless it is a finite number >= 0 (bools refused)."""
    value = None
    if not isinstance(skin, (bool, np.bool_)) and isinstance(skin, (int, float, np.floating, np.integer)):
        try:
            value = float(skin)
        except OverflowError:  # a Python int beyond float range
            value = None
    if value is None or not np.isfinite(value) or value < 0:
        raise ValueError(f"`skin` must be a finite number >= 0 (Å), got {skin!r}")
    return value


def _real(value, name) -> float:
    """``value`` as a float (inf beyond the float range); TypeError unless it is a real number (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (_numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # a Python int beyond float range
        return math.inf if value > 0 else -math.inf


def check_number(value, name, minimum=None) -> float:
    """``value`` as a float: TypeError unless it is a real number, ValueError unless finite (and >= ``minimum``).
    ``name`` is shown as given, as in :func:`check_int`."""
    x = _real(value, name)
    if not math.isfinite(x) or (minimum is not None and x < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value}")
    return x


def check_positive(value, name, allow_inf=False) -> float:
    """``value`` as a float: TypeError unless it is a real number, ValueError unless finite and > 0 (or inf with
    ``allow_inf``: no limit)."""
    x = _real(value, name)
    if not (x > 0 and (math.isfinite(x) or (allow_inf and x == math.inf))):
        what = "a number > 0 (math.inf: no limit)" if allow_inf else "a finite number > 0"
        raise ValueError(f"{name} must be {what}, got {value}")
    return x


#: the shortest MD time step accepted, fs: anything shorter is a time step given in seconds (0.5e-15 for 0.5 fs)
MIN_TIMESTEP_FS = 1e-3


def check_timestep(value, name="`dt`") -> float:
    """An MD time step in fs as a float: :func:`check_positive`, and at least :data:`MIN_TIMESTEP_FS` (a step in
    seconds, e.g. 0.5e-15, ran without complaint at 0.000 ns/day)."""
    x = check_positive(value, name)
    if x < MIN_TIMESTEP_FS:
        raise ValueError(f"{name} is in fs and must be >= {MIN_TIMESTEP_FS:g} fs, got {x:g}: a time step in seconds? "
                         "give it in fs (e.g. 0.5)")
    return x


#: the strongest Langevin friction accepted, 1/fs (a velocity relaxation time of 0.1 fs, shorter than any MD step)
MAX_FRICTION_PER_FS = 10.0


def check_friction(value, name="`friction`") -> float:
    """A Langevin friction in 1/fs as a float: :func:`check_positive`, and at most :data:`MAX_FRICTION_PER_FS` (a
    friction in 1/s, e.g. 5e13, or in 1/ps, ran as a velocity re-draw every step without complaint)."""
    x = check_positive(value, name)
    if x > MAX_FRICTION_PER_FS:
        raise ValueError(f"{name} is in 1/fs and must be <= {MAX_FRICTION_PER_FS:g} (a velocity relaxation time of "
                         f"{1 / MAX_FRICTION_PER_FS:g} fs), got {x:g}: a friction in 1/ps or 1/s? give it in 1/fs "
                         "(e.g. 0.05, a 20 fs relaxation time)")
    return x


def check_cutoff(cutoff, name="cutoff") -> float:
    return check_positive(cutoff, f"`{name}`")


# lookup: atomic number -> species index (built per spec and cached by the caller)
def species_lookup(spec_numbers):
    table = np.full(len(SYMBOLS) + 1, -1, dtype=np.int64)
    for k, z in enumerate(spec_numbers):
        table[z] = k
    return table


def species_index(numbers, table, n_atoms, species_names):
    """Map atomic numbers (N,) to species indices; ValueError naming symbol and atom."""
    if numbers is None:
        raise TypeError("`numbers` is required, got None")
    numbers = np.asarray(numbers)
    if numbers.size == 0 and numbers.dtype.kind == "f":  # `[]`: NumPy makes an empty list float64
        numbers = numbers.astype(np.int64)
    if numbers.dtype.kind not in "iu":
        raise TypeError(f"`numbers` must be an integer array of atomic numbers, got dtype {numbers.dtype}")
    if numbers.shape != (n_atoms,):
        raise ValueError(f"`numbers` must have shape ({n_atoms},) to match `positions`, got {numbers.shape}")
    if n_atoms == 0:
        return np.zeros(0, dtype=np.int32)
    z_max = min(len(table), len(SYMBOLS)) - 1  # 118 (Og)
    if numbers.min() < 1 or numbers.max() > z_max:
        bad = int(np.flatnonzero((numbers < 1) | (numbers > z_max))[0])
        raise ValueError(f"`numbers` holds {int(numbers[bad])} at atom {bad}, which is not an atomic number "
                         f"(1 to {z_max})")
    idx = table[numbers]
    if (idx < 0).any():
        bad = int(np.flatnonzero(idx < 0)[0])
        z = int(numbers[bad])
        sym = SYMBOLS[z] if 0 < z < len(SYMBOLS) else str(z)
        raise ValueError(
            f"atom {bad} is {sym} (Z={z}), which is not in the spec's species {list(species_names)}: the feature spec "
            "(and so any model built on it) knows only these elements"
        )
    return idx.astype(np.int32)


def check_feature_arrays(spec, invariant, covariant, species, xp=np, what=""):
    """``invariant, covariant, species`` as ``xp`` arrays (NumPy or CuPy), checked against ``spec``.

    The one check for feature arrays that did not come from :func:`fastfeat.featurize` in this call
    (inference from features, training sets): species must be integer indices into the spec's species
    (an exported model routes an atom to the network of its index, so an index out of range would
    silently give zero forces), the shapes ``(N, n_invariant)``, ``(N, n_covariant, 3)`` must match
    the species and the spec, and the features must be finite floating-point numbers. ``what`` prefixes
    the messages (e.g. ``"training set: "``).
    """
    s = xp.asarray(species)
    if s.dtype.kind not in "iu":
        raise TypeError(f"{what}`species` must be an integer array of indices into the spec's species, "
                        f"got dtype {s.dtype}")
    if s.ndim != 1:
        raise ValueError(f"{what}`species` must have shape (N,), got {tuple(s.shape)}")
    n = s.shape[0]
    hint = "; featurize with the model's (the spec's) FeatureSpec"
    g = xp.asarray(invariant)
    if tuple(g.shape) != (n, spec.n_invariant):
        more = hint if g.ndim == 2 and g.shape[0] == n else ""
        raise ValueError(f"{what}`invariant` must have shape (N, n_invariant) = ({n}, {spec.n_invariant}) to match "
                         f"`species` ({n} atoms) and the spec, got {tuple(g.shape)}{more}")
    v = xp.asarray(covariant)
    if tuple(v.shape) != (n, spec.n_covariant, 3):
        more = hint if v.ndim == 3 and v.shape[0] == n and v.shape[2] == 3 else ""
        raise ValueError(f"{what}`covariant` must have shape (N, n_covariant, 3) = ({n}, {spec.n_covariant}, 3) "
                         f"to match `species` ({n} atoms) and the spec, got {tuple(v.shape)}{more}")
    for name, arr in (("invariant", g), ("covariant", v)):
        if arr.dtype.kind != "f":  # a silent cast would drop imaginary parts, parse strings, read bools as 0/1
            raise TypeError(f"{what}`{name}` must be a floating-point array, got dtype {arr.dtype}")
        finite = xp.isfinite(arr).reshape(n, -1).all(axis=1) if n else None
        if n and not bool(finite.all()):
            bad = int(xp.flatnonzero(~finite)[0])
            raise ValueError(f"{what}`{name}` holds NaN or inf at atom {bad}: features must be finite")
    n_species = spec.n_species
    if n and (int(s.min()) < 0 or int(s.max()) >= n_species):
        bad = int(xp.flatnonzero((s < 0) | (s >= n_species))[0])
        raise ValueError(f"{what}`species` holds {int(s[bad])} at atom {bad}, which is not an index into the "
                         f"spec's species {list(spec.species)} (valid: 0 to {n_species - 1})")
    return g, v, s
