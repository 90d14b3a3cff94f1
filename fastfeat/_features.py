"""Public featurization: `featurize` (one-shot, batched) and `Featurizer` (MD).

All checking and device dispatch happen here; kernels live in _kernels/.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np

from . import _device, _fork, _threads
from ._box import CellTooSmallError
from ._neighbors import bin_atoms, build_csr_cpu, one_shot_grid
from ._spec import FeatureSpec
from ._validation import (
    check_cell,
    check_device,
    check_dtype,
    check_pbc,
    check_positions,
    check_skin,
    species_index,
    species_lookup,
)

__all__ = ["Features", "featurize", "Featurizer", "KernelParams", "kernel_params"]


@dataclass(frozen=True)
class KernelParams:
    """A FeatureSpec compiled into the flat arrays the kernels take."""

    cutoff: float
    acut: float
    radial_ladders: tuple  # (n_q, eta_l, rs0_l, delta_l, cnt_l, start_l, q_k, c_l)
    covariant_ladders: tuple
    eta_u: np.ndarray  # distinct angular etas
    ebits_u: np.ndarray  # binary digits of eta_u / eta_u[0] when a small integer
    enb_u: np.ndarray  # number of those digits (0: compute the exp directly)
    zeta_v: np.ndarray  # zeta of the distinct (zeta, lambda) combinations
    lam_l: np.ndarray  # distinct lambdas
    lam_idx_v: np.ndarray  # lambda index of each (zeta, lambda) combination
    zbits_v: np.ndarray  # binary digits of integral zeta
    znb_v: np.ndarray  # number of digits (0: non-integral zeta, use pow)
    pref_v: np.ndarray  # 2: the angular factor is 2 ((1 + lambda cos) / 2)^zeta
    grid_q: np.ndarray  # position u * n_v + v of parameter q in the (eta, (zeta, lambda)) grid
    use_grid: bool  # accumulate the full grid (cheap when the spec is (nearly) a grid)
    ang_u_q: np.ndarray
    ang_v_q: np.ndarray
    pair_ab: np.ndarray
    n_radial_total: int
    # angular covariant vectors, per parameter: eta, zeta, lambda, prefactor 2 (see pref_v), first parameter with the
    # same eta, first with the same (zeta, lambda), integral zeta (0: not integral)
    wang_p: np.ndarray
    mixed_ab: np.ndarray  # (S, S): index of the unlike species pair (a, b), a < b, among such pairs; -1 else

    def args(self):
        return (
            self.cutoff, self.acut, *self.radial_ladders, *self.covariant_ladders,
            self.eta_u, self.ebits_u, self.enb_u, self.zeta_v, self.lam_l, self.lam_idx_v, self.zbits_v, self.znb_v,
            self.pref_v, self.grid_q, self.use_grid,
            self.ang_u_q, self.ang_v_q,
            self.pair_ab, self.n_radial_total, self.wang_p, self.mixed_ab,
        )


def gaussian_ladders(params):
    """Group (eta, r_s) parameters into ladders: equal eta, equally spaced r_s.

    Returns ``(n_q, eta_l, rs0_l, delta_l, cnt_l, start_l, q_k, c_l)``: ladder
    ``l`` covers parameters ``q_k[start_l[l] : start_l[l] + cnt_l[l]]`` with
    r_s = rs0_l + k * delta_l; c_l = exp(-2 eta delta^2).
    """
    ladders = []
    by_eta = {}
    for q, (eta, rs) in enumerate(params):
        by_eta.setdefault(eta, []).append((rs, q))
    for eta, items in by_eta.items():
        items.sort()
        run = [items[0]]
        for rs, q in items[1:]:
            if len(run) == 1:
                ok = rs > run[0][0]
            else:
                step = run[1][0] - run[0][0]
                ok = abs((rs - run[-1][0]) - step) <= 1e-9 * max(1.0, abs(step))
            if ok:
                run.append((rs, q))
            else:
                ladders.append((eta, run))
                run = [(rs, q)]
        ladders.append((eta, run))
    eta_l = np.array([e for e, _ in ladders], dtype=np.float64)
    rs0_l = np.array([r[0][0] for _, r in ladders], dtype=np.float64)
    delta_l = np.array([(r[1][0] - r[0][0]) if len(r) > 1 else 1.0 for _, r in ladders], dtype=np.float64)
    cnt_l = np.array([len(r) for _, r in ladders], dtype=np.int64)
    start_l = np.concatenate([[0], np.cumsum(cnt_l)[:-1]]).astype(np.int64) if ladders else np.zeros(0, np.int64)
    q_k = np.array([q for _, r in ladders for _, q in r], dtype=np.int64)
    c_l = np.exp(-2.0 * eta_l * delta_l**2)
    return (len(params), eta_l, rs0_l, delta_l, cnt_l, start_l, q_k, c_l)


def _bit_table(n_k):
    """(bits (K, B) int64, count (K,) int64): set-bit positions of each n_k (0 -> no bits)."""
    width = max([int(n).bit_length() for n in n_k] + [1])
    bits = np.zeros((len(n_k), width), dtype=np.int64)
    count = np.zeros(len(n_k), dtype=np.int64)
    for k, n in enumerate(n_k):
        pos = [b for b in range(width) if (int(n) >> b) & 1]
        bits[k, : len(pos)] = pos
        count[k] = len(pos)
    return bits, count


def kernel_params(spec: FeatureSpec) -> KernelParams:
    ang = np.array(spec.angular, dtype=np.float64).reshape(-1, 3)
    eta_u = np.unique(ang[:, 0]) if len(ang) else np.zeros(1)
    epow_u = np.zeros(len(eta_u), dtype=np.int64)
    if eta_u[0] > 0:
        for u, e in enumerate(eta_u):
            k = e / eta_u[0]
            if round(k) <= 1024 and abs(k - round(k)) <= 1e-9 * k:
                epow_u[u] = int(round(k))
    combos = sorted({(z, l) for _, z, l in spec.angular})
    zeta_v = np.array([c[0] for c in combos], dtype=np.float64)
    lam_v = np.array([c[1] for c in combos], dtype=np.float64)
    zint_v = np.array([int(z) if float(z).is_integer() and z <= 1024 else 0 for z in zeta_v], dtype=np.int64)
    zbits_v, znb_v = _bit_table(zint_v)
    ebits_u, enb_u = _bit_table(epow_u)
    lam_l = np.unique(lam_v) if len(lam_v) else np.ones(1)
    lam_idx_v = np.searchsorted(lam_l, lam_v).astype(np.int64)
    ang_u = np.array([int(np.searchsorted(eta_u, e)) for e, _, _ in spec.angular], dtype=np.int64)
    ang_v = np.array([combos.index((z, l)) for _, z, l in spec.angular], dtype=np.int64)
    # 2^(1 - zeta) (1 + lambda cos)^zeta evaluated as 2 ((1 + lambda cos) / 2)^zeta: the base stays <= 1, so
    # no zeta overflows (2^(1 - zeta) underflowed and (1 + lambda cos)^zeta overflowed beyond zeta ~1024)
    pref_v = np.full(len(zeta_v), 2.0)
    grid_q = ang_u * len(zeta_v) + ang_v
    use_grid = len(eta_u) * len(zeta_v) <= max(2 * len(spec.angular), 8)
    wang = spec.covariant_angular
    wang_p = np.array([(e, z, l, 2.0,
                        next(k for k, w in enumerate(wang) if w[0] == e),  # first parameter with this eta
                        next(k for k, w in enumerate(wang) if w[1:] == (z, l)),  # ... with this (zeta, lambda)
                        int(z) if float(z).is_integer() and z <= 1024 else 0)
                       for e, z, l in wang], np.float64).reshape(-1, 7)
    return KernelParams(
        spec.cutoff, spec.angular_cutoff, gaussian_ladders(spec.radial), gaussian_ladders(spec.covariant),
        eta_u, ebits_u, enb_u, zeta_v, lam_l, lam_idx_v, zbits_v, znb_v, pref_v, grid_q.astype(np.int64),
        bool(use_grid), ang_u, ang_v,
        spec.pair_index(), spec.n_radial, wang_p, spec.mixed_pair_index(),
    )


@dataclass
class Features:
    """Features of one structure or a batch of structures (atoms concatenated).

    Attributes
    ----------
    invariant : (N, n_invariant) float array
        G2 and G4 columns, layout of :attr:`FeatureSpec.invariant_labels`.
    covariant : (N, n_covariant, 3) float array, Å-direction vectors
        V vectors, layout of :attr:`FeatureSpec.covariant_labels`; they rotate
        with the structure.
    species : (N,) int32
        Index of each atom's element in ``spec.species``.
    offsets : (n_structures + 1,) int64
        Atoms of structure s are ``offsets[s]:offsets[s + 1]``.
    """

    invariant: object
    covariant: object
    species: object
    offsets: np.ndarray

    def __len__(self):
        return int(self.offsets[-1])

    def structure(self, s):
        """Features of structure `s` of a batch (views); negative `s` counts from the end."""
        n = len(self.offsets) - 1
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not -n <= s < n:
            raise IndexError(f"structure index {s!r} out of range for a batch of {n} structures")
        s = int(s) % n
        a, b = int(self.offsets[s]), int(self.offsets[s + 1])
        return Features(self.invariant[a:b], self.covariant[a:b], self.species[a:b], np.array([0, b - a]))


def _overlap_error(overlap_n, offset=0):
    i = int(np.flatnonzero(overlap_n >= 0)[0])
    j = int(overlap_n[i])
    raise ValueError(
        f"atoms {i - offset} and {j - offset} are at the same position (closer than 1e-6 Å); "
        "overlapping atoms have no defined features"
    )


def _structure_arrays(atoms=None, positions=None, numbers=None, cell=None, pbc=None, what="`atoms`"):
    """(positions, numbers, cell, pbc) from an ase.Atoms-like object or arrays."""
    if atoms is not None:
        given = [name for name, value in (("positions", positions), ("numbers", numbers), ("cell", cell),
                                          ("pbc", pbc)) if value is not None]
        if given:  # ase.Atoms carry their own; silently ignoring these would featurize another structure
            raise TypeError(f"pass either `atoms` or `positions`/`numbers`/`cell`/`pbc`, not both (got `atoms` and "
                            f"{', '.join(f'`{g}`' for g in given)})")
        try:
            return atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc
        except AttributeError:
            raise TypeError(
                f"{what} must be an ase.Atoms (or have positions, numbers, cell, pbc), got {type(atoms).__name__}"
            ) from None
    if positions is None:
        raise TypeError("featurize needs `atoms` or `positions=` and `numbers=`")
    if numbers is None:
        raise TypeError("`numbers` is required with `positions` (atomic numbers, shape (N,))")
    return positions, numbers, cell, pbc


class _SpecCache:
    """Kernel parameters and species lookup of a spec (read-only arrays, shared between calls)."""

    def __init__(self, spec):
        self.spec = spec
        self.params = kernel_params(spec)
        self.args = self.params.args()  # the kernels' parameter arguments, built once
        self.table = species_lookup(spec.numbers)


def spec_cache(spec) -> _SpecCache:
    """The (cached) kernel parameters of ``spec``; a TypeError for anything but a FeatureSpec."""
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"`spec` must be a fastfeat.FeatureSpec, got {type(spec).__name__}")
    return _cached_spec(spec)


@functools.lru_cache(maxsize=32)
def _cached_spec(spec):
    # FeatureSpec is frozen and hashable: one set of kernel parameters per spec (building them took
    # ~0.5 ms, a third of a warm featurize call on 100 atoms)
    return _SpecCache(spec)


def _prepare(spec_cache, positions, numbers, cell, pbc):
    """Validated CPU inputs. Positions stay float64 whatever the output dtype: wrapping into the cell and
    the differences r_j - r_i of coordinates far from the origin (an unwrapped MD trajectory) lose
    precision in float32 (a frame shifted by 1e4 Å: 9e-4 relative error in float32 features)."""
    pbc = check_pbc(pbc)
    positions = check_positions(positions, dtype=np.float64)
    cell = check_cell(cell, pbc)
    species = species_index(numbers, spec_cache.table, positions.shape[0], spec_cache.spec.species)
    return positions, species, cell, pbc


def featurize(atoms=None, spec=None, device="cpu", dtype=np.float32, *, positions=None, numbers=None,
              cell=None, pbc=None):
    """Invariant and covariant features of one structure or a list of structures.

    Parameters
    ----------
    atoms : ase.Atoms or list of ase.Atoms, optional
        The structure(s). Alternatively pass `positions`, `numbers`, `cell`
        and `pbc` for one structure.
    spec : FeatureSpec
        Which features.
    device : {"cpu", "cuda"}
        Where to compute. With device="cuda", NumPy inputs are copied to the
        GPU and the outputs are CuPy arrays; CUDA `positions` (CuPy or any
        ``__cuda_array_interface__`` array) stay on the device throughout.
    dtype : float32 or float64
        Precision of the computation and the outputs.
    positions : (N, 3) float array, Å
    numbers : (N,) int array of atomic numbers
    cell : (3, 3) array, Å (rows are cell vectors)
    pbc : bool or (3,) bool

    Returns
    -------
    Features
        ``invariant`` (N, n_invariant), ``covariant`` (N, n_covariant, 3),
        ``species`` (N,), ``offsets`` (n_structures + 1,). For a list of
        structures the atoms are concatenated in order.
    """
    if spec is None:
        raise TypeError("featurize needs a `spec` (fastfeat.FeatureSpec)")
    cache = spec_cache(spec)
    dev = check_device(device)
    dtype = check_dtype(dtype)
    if isinstance(atoms, (list, tuple)):
        if not all(x is None for x in (positions, numbers, cell, pbc)):
            raise TypeError("pass either `atoms` (here a list of structures) or `positions`/`numbers`/`cell`/`pbc`, "
                            "not both")
        structures = [_structure_arrays(a, what=f"`atoms[{k}]`") for k, a in enumerate(atoms)]
    else:
        structures = [_structure_arrays(atoms, positions, numbers, cell, pbc)]
    if dev == "cuda" or any(_device.is_device_array(s[0]) for s in structures):
        if dev != "cuda":
            raise TypeError("`positions` is a CUDA array but device='cpu'; pass NumPy arrays or device='cuda'")
        _device.require_cuda()
        from ._features_cuda import featurize_cuda

        return featurize_cuda(cache, structures, dtype)
    prepared = []
    for k, (p, z, c, b) in enumerate(structures):
        try:
            prepared.append(_prepare(cache, p, z, c, b))
        except (ValueError, TypeError) as exc:
            if len(structures) > 1:
                raise type(exc)(f"structure {k}: {exc}") from None
            raise
    with _threads.cpu_kernels():
        return _featurize_prepared_cpu(cache, prepared, dtype)


def _cells_cpu(params, pos, species, cell, pbc, g, v):
    """One structure straight from the cell list (no pair list stored)."""
    from ._kernels.features_cpu import features_cells

    cl = bin_atoms(pos, cell, pbc, params.cutoff, grid=one_shot_grid(pos, cell, pbc, params.cutoff))
    overlap = np.empty(pos.shape[0], np.int64)
    features_cells(cl.poss_cn, species[cl.order], cell, cl.grid.periodic, cl.grid.nbins, cl.grid.search, cl.bin3s,
                   cl.start, cl.order, *params.args(), g, v, overlap)
    return overlap


def _featurize_prepared_cpu(cache, prepared, dtype):
    spec, params = cache.spec, cache.params
    sizes = [p[0].shape[0] for p in prepared]
    offsets = np.zeros(len(prepared) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n_total = int(offsets[-1])
    g = np.empty((n_total, spec.n_invariant), dtype)
    v = np.empty((n_total, spec.n_covariant, 3), dtype)
    species_all = np.empty(n_total, np.int32)
    for s, (pos, species, cell, pbc) in enumerate(prepared):
        a, b = int(offsets[s]), int(offsets[s + 1])
        species_all[a:b] = species
        if b == a:
            continue
        overlap = _cells_cpu(params, pos, species, cell, pbc, g[a:b], v[a:b])
        if overlap.max() >= 0:
            try:
                _overlap_error(overlap)
            except ValueError as exc:
                if len(prepared) > 1:
                    raise ValueError(f"structure {s}: {exc}") from None
                raise
    return Features(g, v, species_all, offsets)


class Featurizer:
    """Repeated featurization of one evolving structure (MD), low overhead.

    The neighbour list is built with ``cutoff + skin`` and reused until an
    atom has moved more than ``skin / 2`` since the last build, or the cell,
    periodicity or atom count changes. Output buffers are reused: the arrays
    returned by a call are overwritten by the next call (copy them to keep).
    Not for several threads at once (a RuntimeError says so): make one per
    thread; ``featurize`` and ``ForceModel`` may be shared.

    Parameters
    ----------
    spec : FeatureSpec
    device : {"cpu", "cuda"}
    dtype : float32 or float64
    skin : float, Å, >= 0

    Call
    ----
    ``g_nf, v_nfc = featurizer(positions, numbers, cell, pbc)``
    """

    def __init__(self, spec, device="cpu", dtype=np.float32, skin=1.0):
        self._cache = spec_cache(spec)
        self.spec = spec
        self.device = check_device(device)
        self.dtype = check_dtype(dtype)
        self.skin = check_skin(skin)
        self.n_rebuilds = 0
        self._key = None
        self._inputs = None  # raw (numbers, cell, pbc) of the last call and their validated forms
        self._busy = _threads.InUse(_threads.SHARED_FEATURIZER)  # one object, one thread at a time
        if self.device == "cuda":
            _device.require_cuda()
            from ._features_cuda import CudaFeaturizerState

            self._cuda = CudaFeaturizerState(self._cache, self.dtype, self.skin)

    def _needs_rebuild(self, pos, species, cell, pbc):
        if self._key is None:
            return True
        n, cell0, pbc0, species0 = self._key
        if n != pos.shape[0]:
            return True
        # validated inputs reused from the last call are the very arrays in the key
        if not (cell is cell0 and pbc is pbc0 and species is species0):
            if not (np.array_equal(cell0, cell) and np.array_equal(pbc0, pbc) and np.array_equal(species0, species)):
                return True
        if self.skin == 0.0:
            return True
        disp = pos - self._pos_ref
        return float(np.max(np.einsum("ij,ij->i", disp, disp), initial=0.0)) > (0.5 * self.skin) ** 2

    def _prepare(self, positions, numbers, cell, pbc):
        """Validated inputs; numbers, cell and pbc equal to the last call's are not checked again
        (an MD step pays for the positions check only)."""
        last = self._inputs
        if (
            last is not None
            and np.array_equal(numbers, last[0])
            and (cell is None if last[1] is None else (cell is not None and np.array_equal(cell, last[1])))
            and np.array_equal(pbc, last[2])
        ):
            pos = check_positions(positions, dtype=np.float64)  # float64 on the CPU (see _prepare)
            if pos.shape[0] != last[3].shape[0]:
                raise ValueError(f"`numbers` has {last[3].shape[0]} entries but `positions` has {pos.shape[0]} rows")
            return pos, last[3], last[4], last[5]
        pos, species, cell_v, pbc_v = _prepare(self._cache, positions, numbers, cell, pbc)
        self._inputs = (np.array(numbers, copy=True), None if cell is None else np.array(cell, copy=True),
                        np.array(pbc, copy=True), species, cell_v, pbc_v)
        return pos, species, cell_v, pbc_v

    def __call__(self, positions, numbers=None, cell=None, pbc=None):
        # numbers defaults to None so that a call with an ase.Atoms gets check_positions' advice, not Python's
        # "missing argument"; None itself is refused by the checks
        with self._busy:
            return self._call(positions, numbers, cell, pbc)

    def _call(self, positions, numbers, cell, pbc):
        if self.device == "cuda":
            return self._cuda(positions, numbers, cell, pbc, self)
        pos, species, cell, pbc = self._prepare(positions, numbers, cell, pbc)
        with _threads.cpu_kernels():
            return self._compute(pos, species, cell, pbc)

    def _call_same_system(self, positions, numbers, cell=None, pbc=None):
        """``self(positions, numbers, cell, pbc)`` where the caller guarantees that numbers, cell and pbc
        are the very objects of every earlier call, unchanged (``ForceEvaluator`` keeps private copies):
        an MD step.

        While the list holds (every atom within skin / 2 of where it was at the last build) the
        positions' finiteness and the reuse test are one pass over them and the kernel runs at once
        (tens of µs less per call than the general path at 100 atoms); anything else (the first call, a
        rebuild, non-finite positions, another shape or dtype, CUDA) takes the general path, which
        validates and reports.
        """
        from ._kernels.neighbors_cpu import max_displacement2

        last = self._inputs
        key = self._key
        if (
            last is None
            or key is None
            or key[3] is not last[3]  # the list was built for other inputs (or their build failed)
            or self.device == "cuda"
            or self.skin == 0.0
            or not isinstance(positions, np.ndarray)
            or positions.dtype != np.float64
            or positions.shape != self._pos_ref.shape
            or not positions.flags.c_contiguous
            or positions.shape[0] == 0
            or not max_displacement2(positions, self._pos_ref) <= (0.5 * self.skin) ** 2
        ):
            return self(positions, numbers, cell, pbc)
        with self._busy, _threads.cpu_kernels():
            return self._run_kernel(positions)

    def _compute(self, pos, species, cell, pbc):
        n = pos.shape[0]
        spec = self.spec
        if self._needs_rebuild(pos, species, cell, pbc):
            if n > 0:
                from ._kernels.features_cpu import group_by_species

                try:
                    # shift vectors in float64 like the positions (see _prepare)
                    start, self._j, self._shiftvec = build_csr_cpu(pos, cell, pbc, spec.cutoff + self.skin,
                                                                   np.float64)
                except CellTooSmallError as exc:
                    if self.skin > 0:
                        raise CellTooSmallError(f"{exc} (the list reaches the spec's cutoff {spec.cutoff} Å plus "
                                                f"the neighbour-list skin {self.skin} Å)") from None
                    raise
                # rows grouped by neighbour species once per build (the kernel then needs no sort per step)
                self._seg = np.empty((n, spec.n_species + 1), np.int64)
                group_by_species(start, self._j, self._shiftvec, species, self._seg)
            self._pos_ref = pos.copy()
            # the reuse test of _call_same_system compiled (or loaded from the cache) here, with the list,
            # not in the first MD step that uses it (an MD run times its steps)
            from ._kernels.neighbors_cpu import max_displacement2

            max_displacement2(self._pos_ref[:0], self._pos_ref[:0])
            self._key = (n, cell, pbc, species)  # validated copies, never handed out
            self._g = np.empty((n, spec.n_invariant), self.dtype)
            self._v = np.empty((n, spec.n_covariant, 3), self.dtype)
            self._overlap = np.empty(n, np.int64)
            self.n_rebuilds += 1
        if n == 0:
            return self._g, self._v
        return self._run_kernel(pos)

    def _run_kernel(self, pos):
        """Features at `pos` (validated float64) from the current list."""
        from ._kernels.features_cpu import features as features_kernel

        _fork.check()
        features_kernel(pos, self._seg, self._j, self._shiftvec, *self._cache.args, self._g, self._v, self._overlap)
        if self._overlap.max() >= 0:
            _overlap_error(self._overlap)
        return self._g, self._v
