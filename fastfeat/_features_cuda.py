"""CUDA featurization: glue around fastfeat._kernels.features_cuda.

``featurize_cuda`` (one-shot, batched) and ``CudaFeaturizerState`` (the
device half of :class:`fastfeat.Featurizer`). Host-side checks use
fastfeat._validation; device positions are checked by their metadata and by
one device reduction (finiteness, together with the bounding box or the
displacement since the last neighbour-list build). Features never leave the
device: the host only reads a few status scalars per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._features import Features, _overlap_error
from ._neighbors_cuda import (
    alloc,
    as_device,
    build_device,
    check_device_positions,
    current_stream,
    download,
    fill,
    launch,
    nonfinite_error,
    quiet,
    to_user,
    upload,
)
from ._validation import check_cell, check_pbc, check_positions, species_index

__all__ = ["featurize_cuda", "CudaFeaturizerState", "ANGULAR_CAPACITY", "FAST_MATH_FLOAT32"]

#: Angular neighbours (r < angular_cutoff) one warp keeps in shared memory;
#: atoms with more are recomputed by the one-thread-per-atom kernel.
ANGULAR_CAPACITY = 64
#: float32 features with the GPU's fast approximate exp/cos/pow/sqrt/division
#: (errors of a few float32 ulp; float64 always uses accurate math).
FAST_MATH_FLOAT32 = True
#: Warps (centre atoms) per block of the warp kernel on a GPU.
WARPS_PER_BLOCK = 4
#: Dynamic shared memory one block may use without opting in (bytes).
_SHARED_LIMIT = 48 * 1024


def _k():
    from ._kernels import features_cuda

    return features_cuda


@dataclass
class _DeviceParams:
    """A FeatureSpec's kernel parameters on the device, in the compute dtype."""

    scalars: tuple  # cutoff, acut, zero, one, half, pi_rc, pi_ra, tiny
    # rad_eta, rad_rs, cov_eta, cov_rs, ang_eta, ang_zeta, ang_lam, ang_zint, ang_pref, pair_ab, mixed_ab;
    # the ang_* arrays hold the G4 parameters, then those of the angular covariant vectors W
    arrays: tuple
    n_radial_total: int
    n_g4: int  # G4 parameters at the head of the ang_* arrays
    table: object  # atomic number -> species index, int64 device array


def _device_params(spec_cache, dtype, stream):
    """The spec's kernel parameters on the device, kept on its (cached, per-spec) ``_SpecCache`` by dtype: an
    MD step finds them with one dict lookup (a key made of the spec's JSON cost ~0.1 ms per call)."""
    per_dtype = spec_cache.__dict__.setdefault("device_params", {})
    key = np.dtype(dtype).str
    hit = per_dtype.get(key)
    if hit is not None:
        return hit
    spec = spec_cache.spec
    f = np.dtype(dtype).type
    rad = np.array(spec.radial, np.float64).reshape(-1, 2)
    cov = np.array(spec.covariant, np.float64).reshape(-1, 2)
    ang = np.concatenate([np.array(spec.angular, np.float64).reshape(-1, 3),
                          np.array(spec.covariant_angular, np.float64).reshape(-1, 3)])
    zint = np.array([int(z) if float(z).is_integer() and z <= 1024 else 0 for z in ang[:, 1]], np.int32)
    host = (rad[:, 0], rad[:, 1], cov[:, 0], cov[:, 1], ang[:, 0], ang[:, 1], ang[:, 2])
    arrays = tuple(upload(np.asarray(a, dtype), stream) for a in host) + (
        upload(zint, stream),
        upload(np.full(len(ang), 2.0, dtype), stream),  # the kernels halve 1 + lambda cos
        upload(np.asarray(spec.pair_index(), np.int32), stream),
        upload(np.asarray(spec.mixed_pair_index(), np.int32), stream),
    )
    scalars = (float(spec.cutoff), float(spec.angular_cutoff), f(0.0), f(1.0), f(0.5), f(math.pi / spec.cutoff),
               f(math.pi / spec.angular_cutoff), 1e-6)
    params = _DeviceParams(scalars, arrays, int(spec.n_radial), len(spec.angular), upload(spec_cache.table, stream))
    per_dtype[key] = params
    return params


class _Outputs:
    """Feature buffers of N atoms and the kernels' status arrays."""

    def __init__(self, n, spec, dtype):
        self.g = alloc((n, spec.n_invariant), dtype)
        self.v = alloc((n, spec.n_covariant, 3), dtype)
        self.overlap_p = alloc(n, np.int64)
        self.overflow_n = alloc(n, np.int32)
        self.status = alloc(2, np.int32)


def _run_features(params, spec, disp, species, offset_n, j_p, rbuild, order_n, out, stream, capacity=None):
    """Launch the feature kernels on r_ij = rbuild[p] + disp[j] - disp[i] (the CSR list's pair vectors at its
    build and the displacements since); returns (number of atoms with an overlap)."""
    k = _k()
    n = disp.shape[0]
    dtype = np.dtype(disp.dtype)
    fill(out.status, 0, stream)
    cap = int(ANGULAR_CAPACITY if capacity is None else capacity)
    per_warp = k.shared_floats_per_warp(spec.n_species, len(spec.radial), len(spec.covariant), spec.n_angular, cap,
                                        spec.n_covariant_angular)
    lanes, _ = k.radial_split(len(spec.radial), len(spec.covariant))
    wpb = min(1 if k.SIMULATOR else WARPS_PER_BLOCK, _SHARED_LIMIT // (per_warp * dtype.itemsize))
    common = (disp, species, offset_n, j_p, rbuild, order_n)
    if wpb >= 1:
        if dtype == np.float64:
            kernel = k.features_warp_f64
        else:
            kernel = k.features_warp_f32_fast if FAST_MATH_FLOAT32 else k.features_warp_f32
        blocks = (n + wpb - 1) // wpb
        with quiet():
            kernel[blocks, wpb * k.WARP, stream, wpb * per_warp * dtype.itemsize](
                *common, *params.scalars, *params.arrays, params.n_radial_total, params.n_g4, cap, per_warp, lanes,
                out.g, out.v, out.overlap_p, out.overflow_n, out.status,
            )
        status = download(out.status, stream)
        only_flagged = True
    else:  # accumulators do not fit in shared memory: one thread per atom for all
        status = np.zeros(2, np.int32)
        only_flagged = False
    if not only_flagged or status[1] > 0:
        launch(k.features_thread, n, stream, *common, only_flagged, *params.scalars, *params.arrays,
               params.n_radial_total, params.n_g4, out.g, out.v, out.overlap_p, out.overflow_n, out.status)
        status = download(out.status, stream)
    return int(status[0])


def _raise_overlap(out, j_p, offsets, stream):
    overlap_p = download(out.overlap_p, stream)
    bad = int(np.flatnonzero(overlap_p >= 0)[0])
    j = int(download(j_p[overlap_p[bad]:overlap_p[bad] + 1], stream)[0])
    s = int(np.searchsorted(offsets, bad, side="right") - 1)
    ovl = np.full(int(offsets[s + 1] - offsets[s]), -1, np.int64)
    ovl[bad - offsets[s]] = j - offsets[s]
    try:
        _overlap_error(ovl)
    except ValueError as exc:
        where = f"structure {s}: " if len(offsets) > 2 else ""
        raise ValueError(where + str(exc)) from None


def _check_numbers_host(numbers, n):
    """Host numbers as an array; device numbers stay on the device (checked by metadata)."""
    dev = as_device(numbers)
    if dev is None:
        return np.asarray(numbers) if numbers is not None else None, None
    dtype = np.dtype(dev.dtype)
    if dtype.kind not in "iu":
        raise TypeError(f"`numbers` must be an integer array of atomic numbers, got dtype {dtype}")
    if tuple(dev.shape) != (n,):
        raise ValueError(f"`numbers` must have shape ({n},) to match `positions`, got {tuple(dev.shape)}")
    return None, dev


def _device_species(numbers_dev, params, species_out, status_f, spec_cache, stream):
    """Species of device numbers into species_out (status_f[2]: bad atom, status_f[3]: changed)."""
    launch(_k().species_lookup, numbers_dev.shape[0], stream, numbers_dev, params.table, species_out, status_f)


def _raise_bad_numbers(numbers_dev, spec_cache, stream):
    host = download(numbers_dev, stream)
    species_index(host, spec_cache.table, host.shape[0], spec_cache.spec.species)
    raise ValueError("`numbers` holds a value that is not an atomic number of the spec")  # not reached


def featurize_cuda(spec_cache, structures, dtype):
    """CUDA implementation of :func:`fastfeat.featurize`.

    Parameters
    ----------
    spec_cache : fastfeat._features._SpecCache
    structures : list of (positions, numbers, cell, pbc)
        positions (N_s, 3) Å on the device (any ``__cuda_array_interface__``)
        or host; numbers (N_s,) atomic numbers, host or device.
    dtype : np.float32 or np.float64

    Returns
    -------
    Features
        ``invariant`` (N, n_invariant), ``covariant`` (N, n_covariant, 3) in
        `dtype`, ``species`` (N,) int32 on the device (CuPy when available);
        ``offsets`` (S + 1,) int64 NumPy.
    """
    spec = spec_cache.spec
    dtype = np.dtype(dtype)
    stream = current_stream()
    params = _device_params(spec_cache, dtype, stream)
    multi = len(structures) > 1
    checked = []
    for s, (p, z, c, b) in enumerate(structures):
        prefix = f"structure {s}: " if multi else ""
        try:
            pbc = check_pbc(b)
            dev = as_device(p)
            if dev is not None:
                n_s, _ = check_device_positions(dev)
                pos = dev
            else:
                pos = check_positions(p)
                n_s = pos.shape[0]
                if n_s:  # relative to the first atom, in float64 (the list's pair vectors are computed from these)
                    pos = pos.astype(np.float64) - pos[0]
            cell = check_cell(c, pbc)
            z_host, z_dev = _check_numbers_host(z, n_s)
            species = None if z_dev is not None else species_index(z_host, spec_cache.table, n_s, spec.species)
        except (ValueError, TypeError) as exc:
            if multi:
                raise type(exc)(prefix + str(exc)) from None
            raise
        checked.append((pos, dev is not None, species, z_dev, cell, pbc, n_s, prefix))
    offsets = np.zeros(len(checked) + 1, np.int64)
    np.cumsum([c[6] for c in checked], out=offsets[1:])
    n = int(offsets[-1])
    out = _Outputs(n, spec, dtype)
    species_all = alloc(n, np.int32)
    if n == 0:
        return Features(to_user(out.g), to_user(out.v), to_user(species_all), offsets)

    pos_all = alloc((n, 3), np.float64)
    status_f = upload(np.array([0.0, n, n, 0.0]), stream)
    fill(species_all, -1, stream)
    for (pos, on_dev, species, z_dev, _, _, n_s, prefix), a in zip(checked, offsets[:-1]):
        if n_s == 0:
            continue
        if on_dev:
            launch(_k().copy_relative, n_s, stream, pos, pos_all[a:a + n_s])
        else:
            pos_all[a:a + n_s].copy_to_device(pos, stream=stream)
        if z_dev is not None:
            _device_species(z_dev, params, species_all[a:a + n_s], status_f, spec_cache, stream)
        else:
            species_all[a:a + n_s].copy_to_device(species, stream=stream)
    if any(c[3] is not None for c in checked):
        st = download(status_f, stream)
        if st[2] < n:  # an unknown atomic number (index local to its structure)
            _raise_in_structure(checked, spec_cache, stream)

    cells = np.array([c[4] for c in checked]).reshape(-1, 3, 3)
    pbcs = np.array([c[5] for c in checked]).reshape(-1, 3)
    prefixes = [c[7] for c in checked]
    nl = build_device(pos_all, offsets, cells, pbcs, spec.cutoff, stream, csr=True, out_dtype=dtype,
                      prefixes=prefixes)
    del pos_all
    # the feature kernels take r_ij = rbuild + (u_j - u_i), u the displacement since the build: none here
    disp = alloc((n, 3), dtype)
    fill(disp.reshape(3 * n), 0.0, stream)
    n_overlap = _run_features(params, spec, disp, species_all, nl.offset_n, nl.j_p, nl.rbuild_pc, nl.order_n,
                              out, stream)
    if n_overlap:
        _raise_overlap(out, nl.j_p, offsets, stream)
    return Features(to_user(out.g), to_user(out.v), to_user(species_all), offsets)


def _raise_in_structure(checked, spec_cache, stream):
    """Re-check device numbers on the host, structure by structure, for the exact error message."""
    for pos, _, _, z_dev, _, _, n_s, prefix in checked:
        if z_dev is None:
            continue
        host = download(z_dev, stream)
        try:
            species_index(host, spec_cache.table, n_s, spec_cache.spec.species)
        except ValueError as exc:
            raise ValueError(prefix + str(exc)) from None
    raise ValueError("`numbers` holds a value that is not an atomic number of the spec")


class CudaFeaturizerState:
    """Device state of a :class:`fastfeat.Featurizer` with device="cuda".

    Keeps the positions at the last neighbour-list build (float64, relative to
    an origin fixed until the next build), the CSR list (built with cutoff +
    skin; its pair vectors r_ij at the build, computed in float64) and the
    output buffers on the device. A call writes every atom's displacement since
    the build into its own buffer (in the features' dtype: small numbers, so
    float32 keeps its precision wherever the atoms sit) while checking
    finiteness and the largest displacement (one kernel, one small read),
    rebuilds the list when an atom moved more than skin / 2 (or the cell,
    periodicity, atom count or species changed), then runs the feature kernels
    on r_ij = r_build + u_j - u_i.
    """

    def __init__(self, spec_cache, dtype, skin):
        self.cache = spec_cache
        self.dtype = np.dtype(dtype)
        self.skin = float(skin)
        self.n = None
        self.key = None
        self.nl = None
        self.capacity = None  # None: ANGULAR_CAPACITY
        self.numbers_host = None
        self.species_host = None

    def _allocate(self, n, stream):
        spec = self.cache.spec
        self.n = n
        self.pos = alloc((n, 3), self.dtype)  # displacements since the last build (see stage_positions)
        self.ref = alloc((n, 3), np.float64)  # positions at the last build, relative to origin
        self.species = alloc(n, np.int32)
        fill(self.species, -1, stream)
        self.species_host = None
        self.numbers_host = None
        self.status_f = alloc(4, np.float64)
        self.origin = alloc(3, np.float64)  # positions are staged relative to it (set at every list build)
        fill(self.origin, 0.0, stream)
        self.out = _Outputs(n, spec, self.dtype)
        self.user = (to_user(self.out.g), to_user(self.out.v))
        self.nl = None

    def __call__(self, positions, numbers, cell, pbc, featurizer):
        k = _k()
        stream = current_stream()
        params = _device_params(self.cache, self.dtype, stream)
        pbc = check_pbc(pbc)
        dev = as_device(positions)
        if dev is not None:
            n, _ = check_device_positions(dev)
            src = dev
        else:
            src = check_positions(positions)  # as given (float64 from ASE): stage_positions subtracts atom 0
            n = src.shape[0]
        cell = check_cell(cell, pbc)
        z_host, z_dev = _check_numbers_host(numbers, n)
        species_host = None
        fresh = False
        if z_dev is None:
            if (self.numbers_host is not None and z_host is not None and z_host.shape == self.numbers_host.shape
                    and z_host.dtype == self.numbers_host.dtype and np.array_equal(z_host, self.numbers_host)):
                species_host = self.species_host  # same numbers as the last call: already checked
            else:
                species_host = species_index(z_host, self.cache.table, n, self.cache.spec.species)
                fresh = True
        if n != self.n:
            self._allocate(n, stream)
        if n == 0:
            key = (cell.tobytes(), pbc.tobytes())
            if self.key != key:
                self.key = key
                featurizer.n_rebuilds += 1
            return self.user
        if dev is None:
            src = upload(src, stream)
        use_ref = self.nl is not None and self.skin > 0.0
        launch(k.set_status, 1, stream, self.status_f, 0.0, float(n), float(n), 0.0)
        launch(k.stage_positions, n, stream, src, self.pos, self.ref, use_ref, self.status_f, self.origin,
               threads=k.STAGE_THREADS)
        species_changed = False
        if z_dev is not None:
            _device_species(z_dev, params, self.species, self.status_f, self.cache, stream)
            self.species_host = None
            self.numbers_host = None
        elif fresh or self.species_host is None:
            if self.species_host is None or not np.array_equal(self.species_host, species_host):
                self.species.copy_to_device(species_host, stream=stream)
                species_changed = True
            self.species_host = species_host
            self.numbers_host = np.array(z_host, copy=True)
        disp2, bad_pos, bad_num, changed = download(self.status_f, stream)
        if bad_pos < n:
            raise nonfinite_error(src, int(bad_pos), stream)
        if bad_num < n:
            _raise_bad_numbers(z_dev, self.cache, stream)
        species_changed = species_changed or changed > 0
        key = (cell.tobytes(), pbc.tobytes())
        rebuild = (
            self.nl is None or key != self.key or species_changed or self.skin == 0.0
            or disp2 > (0.5 * self.skin) ** 2
        )
        if rebuild:
            # the old list goes first: its origin and reference positions are overwritten below, so after a
            # failed build (an error, say) the next call must build again, not reuse it
            self.nl = None
            self.key = None
            # a fresh origin, the first atom, fixed until the next build so the skin test still sees every
            # displacement; the positions at the build in float64 (the list's pair vectors come from them) and
            # no displacement yet
            launch(k.set_origin, 3, stream, src, self.origin)
            launch(k.stage_positions, n, stream, src, self.ref, self.ref, False, self.status_f, self.origin,
                   threads=k.STAGE_THREADS)
            self.nl = build_device(self.ref, np.array([0, n]), cell[None], pbc[None],
                                   self.cache.spec.cutoff + self.skin, stream, csr=True, out_dtype=self.dtype)
            fill(self.pos.reshape(3 * n), 0.0, stream)
            self.key = key
            featurizer.n_rebuilds += 1
        nl = self.nl
        n_overlap = _run_features(params, self.cache.spec, self.pos, self.species, nl.offset_n, nl.j_p,
                                  nl.rbuild_pc, nl.order_n, self.out, stream, self.capacity)
        if n_overlap:
            _raise_overlap(self.out, nl.j_p, np.array([0, n]), stream)
        return self.user
