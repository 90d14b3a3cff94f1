"""FeatureSpec: the complete, serialisable description of a feature set."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ._elements import atomic_number

__all__ = ["FeatureSpec", "SPEC_FORMAT_VERSION"]

#: Version of the JSON layout written by :meth:`FeatureSpec.to_json`. A file
#: with a larger number was written by a newer fastfeat and is refused.
SPEC_FORMAT_VERSION = 2
#: A spec without angular covariant vectors is written as version 1 (readable by older fastfeat).
_PLAIN_FORMAT_VERSION = 1
#: Names accepted by :meth:`FeatureSpec.default`.
SPEC_PRESETS = ("default", "dense", "angular", "angular-short", "ani1x")


def _as_param_list(value, width, name):
    if value is None:
        raise TypeError(f"`{name}` must be a sequence of {width}-tuples of numbers (use () for none), got None")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a sequence of {width}-tuples of numbers, got {value!r}") from None
    if arr.size == 0:
        return ()
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"`{name}` must be a sequence of {width}-tuples, got an array of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must contain only finite numbers, got {value!r}")
    return tuple(tuple(float(x) for x in row) for row in arr)


def _distinct_labels(make) -> list:
    """``make(fmt)`` (labels with parameters formatted by ``fmt``) at 6 significant digits, or at the
    fewest more that keep distinct columns' labels distinct (e.g. rs 1.2 and 1.2000001)."""
    for digits in (6, 9, 12, 17):
        labels = make(lambda x, d=digits: f"{x:.{d}g}")
        if len(set(labels)) == len(labels):
            break
    return labels


@dataclass(frozen=True)
class FeatureSpec:
    """Invariant (G2, G4) and covariant (V) feature definitions.

    Parameters
    ----------
    species : sequence of str
        Chemical symbols, in the order used for feature blocks and for the
        species index of every atom (``species.index(symbol)``).
    cutoff : float
        Radial cutoff r_c in Å (G2 and V), > 0.
    angular_cutoff : float
        Cutoff in Å of every fc term of G4, 0 < angular_cutoff <= cutoff.
    radial : sequence of (eta, r_s)
        G2 parameters; eta in 1/Å², r_s in Å.
    angular : sequence of (eta, zeta, lambda)
        G4 parameters; eta in 1/Å², zeta >= 1, lambda = ±1.
    covariant : sequence of (eta, r_s)
        Parameters of the covariant vectors V.
    covariant_angular : sequence of (eta, zeta, lambda), optional
        Parameters of the angular covariant vectors W (same terms as G4, inside
        the angular cutoff): per unordered neighbour pair {j, k} of species
        (a, b), 2^(1-zeta) (1 + lambda cos)^zeta exp(-eta (r_ij² + r_ik² +
        r_jk²)) fc fc fc times (r̂_ij + r̂_ik) (the bisector vectors, every
        species pair a <= b) and times (r̂_ij - r̂_ik), j of species a, k of
        species b (the difference vectors, a < b only). They carry the angles
        that three-body (bending) forces need and the radial V do not.

    Notes
    -----
    Column layout of the invariant matrix: for each species ``a`` in order,
    ``len(radial)`` G2 columns; then for each unordered species pair
    ``(a, b)`` with ``a <= b`` (in species order), ``len(angular)`` G4 columns.
    Covariant layout: for each species ``a``, ``len(covariant)`` V vectors;
    then for each unordered species pair ``(a, b)``, ``a <= b``,
    ``len(covariant_angular)`` bisector W vectors; then for each pair with
    ``a < b``, ``len(covariant_angular)`` difference W vectors.
    """

    species: tuple
    cutoff: float
    angular_cutoff: float
    radial: tuple = ()
    angular: tuple = ()
    covariant: tuple = ()
    covariant_angular: tuple = ()
    _frozen_hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self):
        species = self.species
        if isinstance(species, str) or not hasattr(species, "__iter__"):
            raise TypeError(f"`species` must be a sequence of chemical symbols, got {species!r}")
        species = tuple(species)
        if len(species) == 0:
            raise ValueError("`species` must name at least one element, got an empty sequence")
        for s in species:
            if not isinstance(s, str):
                raise TypeError(f"`species` must contain chemical symbols (str), got {s!r}")
            atomic_number(s, argname="species")
        if len(set(species)) != len(species):
            raise ValueError(f"`species` must not repeat an element, got {species}")
        for name in ("cutoff", "angular_cutoff"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise TypeError(f"`{name}` must be a number, got {type(v).__name__}")
            if not math.isfinite(float(v)) or float(v) <= 0:
                raise ValueError(f"`{name}` must be a finite number > 0, got {v}")
        cutoff, acut = float(self.cutoff), float(self.angular_cutoff)
        if acut > cutoff:
            raise ValueError(f"`angular_cutoff` must be <= `cutoff` ({cutoff}), got {acut}")
        radial = _as_param_list(self.radial, 2, "radial")
        angular = _as_param_list(self.angular, 3, "angular")
        covariant = _as_param_list(self.covariant, 2, "covariant")
        covariant_angular = _as_param_list(self.covariant_angular, 3, "covariant_angular")
        for eta, rs in radial + covariant:
            if eta < 0:
                raise ValueError(f"radial/covariant `eta` must be >= 0, got {eta}")
        for name, params in (("angular", angular), ("covariant_angular", covariant_angular)):
            for eta, zeta, lam in params:
                if eta < 0:
                    raise ValueError(f"{name} `eta` must be >= 0, got {eta}")
                if zeta < 1:
                    raise ValueError(f"{name} `zeta` must be >= 1, got {zeta}")
                if lam not in (1.0, -1.0):
                    raise ValueError(f"{name} `lambda` must be +1 or -1, got {lam}")
        if not radial and not angular:
            raise ValueError("a FeatureSpec needs at least one invariant feature (`radial` or `angular`)")
        if not covariant:
            raise ValueError("a FeatureSpec needs at least one covariant feature (`covariant`)")
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "cutoff", cutoff)
        object.__setattr__(self, "angular_cutoff", acut)
        object.__setattr__(self, "radial", radial)
        object.__setattr__(self, "angular", angular)
        object.__setattr__(self, "covariant", covariant)
        object.__setattr__(self, "covariant_angular", covariant_angular)

    # ------------------------------------------------------------------ sizes
    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def n_pairs(self) -> int:
        s = self.n_species
        return s * (s + 1) // 2

    @property
    def n_radial(self) -> int:
        return self.n_species * len(self.radial)

    @property
    def n_angular(self) -> int:
        return self.n_pairs * len(self.angular)

    @property
    def n_invariant(self) -> int:
        return self.n_radial + self.n_angular

    @property
    def n_covariant_radial(self) -> int:
        """Number of radial covariant vectors V."""
        return self.n_species * len(self.covariant)

    @property
    def n_covariant_angular(self) -> int:
        """Number of angular covariant vectors W (bisector for every species pair, difference for a < b)."""
        s = self.n_species
        return (self.n_pairs + s * (s - 1) // 2) * len(self.covariant_angular)

    @property
    def n_covariant(self) -> int:
        return self.n_covariant_radial + self.n_covariant_angular

    @property
    def numbers(self) -> tuple:
        """Atomic numbers of :attr:`species`, same order."""
        return tuple(atomic_number(s) for s in self.species)

    def pair_index(self) -> np.ndarray:
        """(S, S) int64 matrix: column block of the unordered species pair (a, b)."""
        s = self.n_species
        out = np.zeros((s, s), dtype=np.int64)
        p = 0
        for a in range(s):
            for b in range(a, s):
                out[a, b] = out[b, a] = p
                p += 1
        return out

    def mixed_pair_index(self) -> np.ndarray:
        """(S, S) int64 matrix: position of the unlike species pair (a, b), a < b, among such pairs (the
        block order of the difference W vectors); -1 where a >= b."""
        s = self.n_species
        out = np.full((s, s), -1, dtype=np.int64)
        m = 0
        for a in range(s):
            for b in range(a + 1, s):
                out[a, b] = m
                m += 1
        return out

    # ----------------------------------------------------------------- labels
    @property
    def invariant_labels(self) -> list:
        def make(n):
            labels = []
            for a in self.species:
                labels += [f"G2[{a}; eta={n(e)}, rs={n(r)}]" for e, r in self.radial]
            for ia, a in enumerate(self.species):
                for b in self.species[ia:]:
                    labels += [f"G4[{a},{b}; eta={n(e)}, zeta={n(z)}, lambda={l:+g}]" for e, z, l in self.angular]
            return labels

        return _distinct_labels(make)

    @property
    def covariant_labels(self) -> list:
        def make(n):
            labels = []
            for a in self.species:
                labels += [f"V[{a}; eta={n(e)}, rs={n(r)}]" for e, r in self.covariant]
            for kind, same in (("Wsum", True), ("Wdiff", False)):
                for ia, a in enumerate(self.species):
                    for b in self.species[ia + (0 if same else 1):]:
                        labels += [f"{kind}[{a},{b}; eta={n(e)}, zeta={n(z)}, lambda={l:+g}]"
                                   for e, z, l in self.covariant_angular]
            return labels

        return _distinct_labels(make)

    # ------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        out = {
            "format_version": SPEC_FORMAT_VERSION if self.covariant_angular else _PLAIN_FORMAT_VERSION,
            "species": list(self.species),
            "cutoff": self.cutoff,
            "angular_cutoff": self.angular_cutoff,
            "radial": [list(p) for p in self.radial],
            "angular": [list(p) for p in self.angular],
            "covariant": [list(p) for p in self.covariant],
        }
        if self.covariant_angular:  # only then: specs without them stay readable by older fastfeat
            out["covariant_angular"] = [list(p) for p in self.covariant_angular]
        return out

    def to_json(self) -> str:
        """Serialise to a JSON string (exact round trip with :meth:`from_json`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        if not isinstance(data, dict):
            raise TypeError(f"FeatureSpec data must be a dict, got {type(data).__name__}")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"FeatureSpec JSON needs an integer `format_version` >= 1, got {version!r}")
        if version > SPEC_FORMAT_VERSION:
            raise ValueError(
                f"FeatureSpec `format_version` {version} is newer than this fastfeat understands "
                f"(<= {SPEC_FORMAT_VERSION}); upgrade fastfeat to read it"
            )
        keys = {"species", "cutoff", "angular_cutoff", "radial", "angular", "covariant"}
        optional = {"covariant_angular"}
        unknown = set(data) - keys - optional - {"format_version"}
        if unknown:
            raise ValueError(f"FeatureSpec JSON has unknown keys {sorted(unknown)}; valid keys: {sorted(keys | optional)}")
        missing = keys - set(data)
        if missing:
            raise ValueError(f"FeatureSpec JSON is missing keys {sorted(missing)}")
        return cls(**{k: data[k] for k in keys | (optional & set(data))})

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        """Parse a FeatureSpec written by :meth:`to_json`."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"`text` must be a JSON string, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"`text` is not valid FeatureSpec JSON: {exc}") from None
        return cls.from_dict(data)

    # ---------------------------------------------------------------- presets
    @classmethod
    def default(cls, species, preset: str = "default") -> "FeatureSpec":
        """A documented, sensible feature set for ``species``.

        ``preset="default"`` (cutoff 5.2 Å, angular cutoff 3.5 Å):
        12 G2 per species, Gaussian shells r_s = 0.8 … 4.8 Å with
        eta = 1/(2 Δr_s²); 16 G4 per species pair, eta ∈ {0.02, 0.08} Å⁻²,
        zeta ∈ {1, 2, 4, 8}, lambda = ±1; 8 V per species, r_s = 0.8 … 4.6 Å.

        ``preset="dense"``: ``"default"`` with a covariant grid twice as fine:
        16 V per species, r_s = 0.8 … 4.6 Å, eta = 1/(2 Δr_s²) ≈ 7.8 Å⁻². The
        force heads resolve bond-length differences through these radial
        shells; on the bundled data sets this grid lowers the test force error
        of the basis head by 10-45 % (README, "Bundled models"). The
        ``"angular"`` presets (the bundled models' features) build on it.

        ``preset="angular"``: ``"dense"`` with angular covariant vectors W,
        eta in {0.02, 0.3} Å⁻², zeta in {1, 4}, lambda = ±1 (8 per species pair,
        bisector and, for unlike species, difference vectors), and an angular
        cutoff of 4.5 Å (G4 and W). They let the force heads represent
        three-body (bending) forces; test relative force RMSE of the basis
        head with the bundled training settings: peo 0.088 -> 0.058, li4p2o7
        0.49 -> 0.35 (README, "Why the oxide models fall short").

        ``preset="angular-short"``: ``"angular"`` with the angular cutoff of
        ``"dense"`` (3.5 Å, G4 and W): about a third of the angular neighbour
        pairs, so per MD step it costs about 1.5× ``"dense"`` instead of 3×
        (``benchmarks/compare/preset_cost.py``). Enough where the bending
        partners are close (peo: test rel. RMSE 0.058, as with 4.5 Å; the
        bundled peo model uses it), not for the oxides (li4p2o7 0.37-0.39 against 0.35-0.36).

        ``preset="ani1x"``: the ANI-1x-sized benchmark set (cutoff 5.2 Å,
        angular 3.5 Å): 16 G2 per species (r_s = 0.9 … 4.93 Å, eta = 16),
        32 G4 per species pair (eta ∈ {0.01, 0.04, 0.1, 0.4} × zeta ∈
        {1, 2, 4, 8} × lambda = ±1) and 16 V per species. For H C N O this is
        384 invariants, exactly as many as ANI-1x's AEV.
        """
        if preset in ("default", "dense", "angular", "angular-short"):
            rs = np.linspace(0.8, 4.8, 12)
            eta = 1.0 / (2.0 * (rs[1] - rs[0]) ** 2)
            radial = [(eta, r) for r in rs]
            angular = [(e, z, l) for e in (0.02, 0.08) for z in (1.0, 2.0, 4.0, 8.0) for l in (1.0, -1.0)]
            rc = np.linspace(0.8, 4.6, 8 if preset == "default" else 16)
            etac = 1.0 / (2.0 * (rc[1] - rc[0]) ** 2)
            covariant = [(etac, r) for r in rc]
            if preset in ("angular", "angular-short"):
                wang = [(e, z, l) for e in (0.02, 0.3) for z in (1.0, 4.0) for l in (1.0, -1.0)]
                return cls(species, 5.2, 4.5 if preset == "angular" else 3.5, radial, angular, covariant, wang)
            return cls(species, 5.2, 3.5, radial, angular, covariant)
        if preset == "ani1x":
            rs = 0.9 + 0.26875 * np.arange(16)
            radial = [(16.0, r) for r in rs]
            angular = [(e, z, l) for e in (0.01, 0.04, 0.1, 0.4) for z in (1.0, 2.0, 4.0, 8.0) for l in (1.0, -1.0)]
            covariant = [(4.0, r) for r in 0.9 + 0.26875 * np.arange(16)]
            return cls(species, 5.2, 3.5, radial, angular, covariant)
        raise ValueError(f"`preset` must be one of {list(SPEC_PRESETS)}, got {preset!r}")
