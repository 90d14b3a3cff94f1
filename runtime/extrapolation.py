"""Is a structure inside what the model was trained on? Invariant features against their training range.

A per-element network is only trustworthy for environments like those it was trained on. As n2p2 does
for its symmetry functions, the exporter stores, for every element, the smallest and largest value
of each invariant feature over the training atoms of that element (metadata
``fastfeat.feature_range``); an atom with a feature outside that interval is extrapolating, and its
force is a guess. The excess is measured in units of the column's training range: 0.1 means 10 %
of the range beyond its edge.

This is a necessary sign, not a sufficient one: an atom inside every interval can still sit in a
combination of features the training never covered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

__all__ = ["FEATURE_RANGE_KEY", "feature_range_metadata", "parse_feature_range", "Extrapolation", "extrapolation",
           "bounds", "report"]

#: default tolerance of the check (in units of a column's training range): absorbs the float32 rounding of
#: features whose summation order differs between a structure featurized alone and in a batch
DEFAULT_TOLERANCE = 1e-3

#: metadata key of the training ranges (JSON: {symbol: {"min": [...], "max": [...], "n_atoms": k}})
FEATURE_RANGE_KEY = "fastfeat.feature_range"


def feature_range_metadata(spec, invariant, species) -> str:
    """The ``fastfeat.feature_range`` value: per element of ``spec``, the column-wise min and max of the
    invariant features (``invariant`` (N, n_invariant), ``species`` (N,) indices into ``spec.species``)
    over its atoms. Elements without atoms are left out."""
    g = np.asarray(invariant, dtype=np.float64)
    s = np.asarray(species)
    if g.shape != (len(s), spec.n_invariant):
        raise ValueError(f"`invariant` must have shape ({len(s)}, {spec.n_invariant}), got {g.shape}")
    out = {}
    for e, symbol in enumerate(spec.species):
        rows = g[s == e]
        if len(rows):
            # float64 text of float32 values reads back exactly; repr keeps every digit
            out[symbol] = {"min": rows.min(axis=0).tolist(), "max": rows.max(axis=0).tolist(), "n_atoms": int(len(rows))}
    return json.dumps(out, separators=(",", ":"))


def parse_feature_range(text, spec, what="metadata `fastfeat.feature_range`") -> dict:
    """``{symbol: (min, max)}`` (float64 arrays of length ``spec.n_invariant``) from
    :func:`feature_range_metadata`'s text; ValueError naming the fault."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(raw).__name__}")
    ranges = {}
    for symbol, item in raw.items():
        if symbol not in spec.species:
            raise ValueError(f"{what} names {symbol!r}, which is not in the spec's species {list(spec.species)}")
        try:
            lo = np.asarray(item["min"], dtype=np.float64)
            hi = np.asarray(item["max"], dtype=np.float64)
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{what} of {symbol} needs lists 'min' and 'max' of numbers") from None
        if lo.shape != (spec.n_invariant,) or hi.shape != (spec.n_invariant,):
            raise ValueError(f"{what} of {symbol}: 'min' and 'max' must hold {spec.n_invariant} values "
                             f"(the spec's invariant columns), got {lo.shape} and {hi.shape}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
            raise ValueError(f"{what} of {symbol}: every 'min' must be finite and <= its 'max'")
        ranges[symbol] = (lo, hi)
    return ranges


@dataclass
class Extrapolation:
    """Which atoms have invariant features outside the model's training range.

    Attributes
    ----------
    excess : (N,) float64 array
        Per atom, the largest excess over its element's training range, in units of the column's range
        (0 inside every interval; inf for an element the training never saw, or a column that was
        constant in training and differs from that constant).
    tolerance : float
        Atoms whose excess is above this count as extrapolating.
    atoms : (k,) int array
        Indices of the extrapolating atoms.
    worst_atom, worst_column, worst_value, worst_interval
        The atom and feature column (its label) of the largest excess, the feature's value and the
        training interval (None when no atom extrapolates).
    """

    excess: np.ndarray
    tolerance: float
    atoms: np.ndarray
    worst_atom: int | None = None
    worst_column: str | None = None
    worst_value: float | None = None
    worst_interval: tuple | None = None

    @property
    def n_atoms(self) -> int:
        return len(self.excess)

    @property
    def fraction(self) -> float:
        return len(self.atoms) / self.n_atoms if self.n_atoms else 0.0

    def __bool__(self) -> bool:
        return bool(len(self.atoms))

    def summary(self) -> str:
        """One line for a log."""
        if not len(self.atoms):
            return f"all {self.n_atoms} atoms inside the training range of every invariant feature"
        lo, hi = self.worst_interval
        e = self.excess[self.worst_atom]
        head = f"{len(self.atoms)} of {self.n_atoms} atoms ({100 * self.fraction:.1f} %) have invariant features " \
               f"outside the training range (worst: atom {self.worst_atom}, "
        if np.isnan(lo):
            worst = "an element with no atoms in the training data"
        else:
            by = f"by {e:.3g} x its training range" if np.isfinite(e) else "a column constant in training"
            worst = f"{self.worst_column} = {self.worst_value:.4g}, trained on [{lo:.4g}, {hi:.4g}], {by}"
        return head + worst + "); their forces are extrapolated"


def bounds(spec, ranges, tolerance=DEFAULT_TOLERANCE):
    """(lo, hi), each (n_species, n_invariant) float64: the training range of every column per element,
    widened by ``tolerance`` times its width; an element without range gets lo = +inf, hi = -inf (every
    value outside). A value v is outside exactly when :func:`extrapolation` counts it: v < lo or v > hi."""
    lo = np.full((spec.n_species, spec.n_invariant), np.inf)
    hi = np.full((spec.n_species, spec.n_invariant), -np.inf)
    for e, symbol in enumerate(spec.species):
        if symbol in ranges:
            a, b = ranges[symbol]
            lo[e] = a - tolerance * (b - a)
            hi[e] = b + tolerance * (b - a)
    return lo, hi


def extrapolation(invariant, species, spec, ranges, tolerance=0.0) -> Extrapolation:
    """:class:`Extrapolation` of features ``invariant`` (N, n_invariant) of atoms with element indices
    ``species`` (N,) against ``ranges`` (:func:`parse_feature_range`); an atom counts as outside when its
    largest excess is above ``tolerance`` (``ForceModel.extrapolation`` passes :data:`DEFAULT_TOLERANCE`).
    The NumPy reference of ``runtime/_range_kernel.py``."""
    g = np.asarray(invariant, dtype=np.float64)
    s = np.asarray(species)
    tolerance = float(tolerance)
    excess = np.zeros(len(s))
    where = np.zeros(len(s), dtype=np.int64)
    for e, symbol in enumerate(spec.species):
        rows = np.flatnonzero(s == e)
        if not len(rows):
            continue
        if symbol not in ranges:
            excess[rows] = np.inf
            continue
        lo, hi = ranges[symbol]
        width = hi - lo
        beyond = np.maximum(lo - g[rows], g[rows] - hi)  # > 0 outside
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(beyond > 0, beyond / width, 0.0)  # a zero-width column: inf when outside
        rel = np.nan_to_num(rel, nan=0.0, posinf=np.inf)
        col = rel.argmax(axis=1)
        where[rows] = col
        excess[rows] = rel[np.arange(len(rows)), col]
    atoms = np.flatnonzero(excess > tolerance)
    out = Extrapolation(excess=excess, tolerance=tolerance, atoms=atoms)
    if len(atoms):
        i = int(atoms[np.argmax(excess[atoms])])
        c = int(where[i])
        symbol = spec.species[int(s[i])]
        out.worst_atom = i
        out.worst_column = spec.invariant_labels[c]
        out.worst_value = float(g[i, c])
        out.worst_interval = (float(ranges[symbol][0][c]), float(ranges[symbol][1][c])) if symbol in ranges \
            else (float("nan"), float("nan"))
    return out


def report(model, atoms, when, prog, quiet=False, stream=None):
    """A command's training-range check of ``atoms`` ``when`` ("start", "end", ...): one line on stderr
    (or ``stream``), always when atoms extrapolate, otherwise unless ``quiet``. Nothing for a model
    without training ranges. Returns the :class:`Extrapolation` or None."""
    import sys

    if getattr(model, "feature_range", None) is None:
        return None
    ex = model.extrapolation(atoms)
    if ex or not quiet:
        print(f"{prog}: extrapolation at the {when}: {ex.summary()}", file=stream or sys.stderr)
    return ex
