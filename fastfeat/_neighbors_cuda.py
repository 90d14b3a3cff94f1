"""CUDA neighbour list: host-side glue around fastfeat._kernels.neighbors_cuda.

Positions may be CuPy arrays, Numba device arrays or any
``__cuda_array_interface__`` object (or NumPy arrays, which are uploaded);
every result stays on the device. CuPy is optional: when it is importable the
outputs are CuPy arrays (zero-copy views, allocated from CuPy's memory pool and
launched on CuPy's current stream), otherwise Numba device arrays.

The only host transfers are a few scalars per build: the per-structure
bounding box (needed for the bin grid, computed by ``fastfeat._box.bin_grid``
on the host), a non-finite flag and the total number of pairs (needed to
allocate the outputs).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ._box import bin_grid, binning_box, pair_r2_limit
from ._neighbors import NeighborList
from ._validation import MAX_ATOMS, check_cell, check_positions

__all__ = ["neighbor_list_cuda", "build_device", "DeviceNeighbors"]


# ---------------------------------------------------------------- device helpers
def _cuda():
    from . import _compat  # noqa: F401  (before numba.cuda)
    from numba import cuda

    return cuda


def _kernels():
    from ._kernels import neighbors_cuda

    return neighbors_cuda


_CUPY = None


def cupy_module():
    """The cupy module, or None when it is not importable (or Numba simulates CUDA)."""
    global _CUPY
    if _CUPY is None:
        if _kernels().SIMULATOR:
            _CUPY = False
        else:
            try:
                import cupy

                _CUPY = cupy
            except Exception:  # not installed, or no usable CUDA runtime for it
                _CUPY = False
    return _CUPY or None


def current_stream():
    """Numba stream to launch on: CuPy's current stream when CuPy is in use, else the default stream."""
    cuda = _cuda()
    cp = cupy_module()
    if cp is not None:
        ptr = cp.cuda.get_current_stream().ptr
        if ptr:
            return cuda.external_stream(ptr)
    default = getattr(cuda, "default_stream", None) or cuda.stream  # the built-in simulator has only `stream`
    return default()


def is_numba_device_array(x) -> bool:
    return bool(getattr(x, "__cuda_ndarray__", False))


def as_device(x):
    """A Numba device-array view of a CUDA array (CuPy, Numba, any ``__cuda_array_interface__``), else None.

    The producer's stream (if it exports one) is synchronised first, so work
    queued on another stream (e.g. PyTorch's) is complete.
    """
    if is_numba_device_array(x):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        return _cuda().as_cuda_array(x)
    return None


def alloc(shape, dtype):
    """Uninitialised device array (a Numba view; CuPy's memory pool when CuPy is available)."""
    dtype = np.dtype(dtype)
    cp = cupy_module()
    size = int(np.prod(shape))
    if cp is not None and size > 0:
        # same stream as every launch: no synchronisation needed
        return _cuda().as_cuda_array(cp.empty(shape, dtype), sync=False)
    return _cuda().device_array(shape, dtype)


def upload(host, stream):
    """Copy a host array to a new device array."""
    host = np.ascontiguousarray(host)
    dev = alloc(host.shape, host.dtype)
    if host.size:
        dev.copy_to_device(host, stream=stream)
    return dev


def download(dev, stream):
    """Copy a (small) device array to the host and wait for it."""
    out = dev.copy_to_host(stream=stream)
    stream.synchronize()
    return out


def to_user(dev):
    """What the public API returns for a device array: CuPy when available (zero-copy), else Numba."""
    cp = cupy_module()
    if cp is None:
        return dev
    if dev.size == 0:
        return cp.empty(dev.shape, dev.dtype)
    return cp.asarray(dev)


@contextmanager
def quiet():
    """Silence Numba's low-occupancy warning: small structures legitimately launch small grids."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size .* low occupancy")
        yield


def launch(kernel, n, stream, *args, threads=None):
    """kernel over n threads (nothing when n == 0)."""
    if n <= 0:
        return
    t = threads or _kernels().THREADS
    with quiet():
        kernel[(n + t - 1) // t, t, stream](*args)


def fill(dev, value, stream):
    launch(_kernels().fill_value, dev.shape[0], stream, dev, value)


def exclusive_scan(x, out, stream):
    """out[0] = 0, out[k + 1] = x[0] + ... + x[k] (int64, out has len(x) + 1 elements)."""
    fill(out[:1], 0, stream)
    if x.shape[0]:
        _inclusive_scan(x, out[1:], stream)


def _inclusive_scan(x, y, stream):
    k = _kernels()
    n = x.shape[0]
    t = k.THREADS
    nb = (n + t - 1) // t
    sums = alloc(nb, np.int64)
    with quiet():
        k.scan_blocks[nb, t, stream](x, y, sums)
    if nb > 1:
        scanned = alloc(nb, np.int64)
        _inclusive_scan(sums, scanned, stream)
        with quiet():
            k.add_block_offsets[nb, t, stream](y, scanned)


def check_device_memory(n_bytes, what):
    """MemoryError when the device has clearly too little free memory for `what`."""
    try:
        free, _total = _cuda().current_context().get_memory_info()
    except Exception:
        return
    cp = cupy_module()
    if cp is not None:
        free += cp.get_default_memory_pool().free_bytes()
    if n_bytes > free:
        raise MemoryError(
            f"{what} needs {n_bytes / 2**30:.2f} GiB of GPU memory, more than the {free / 2**30:.2f} GiB free; "
            "reduce the number of atoms or the cutoff"
        )


def check_device_positions(x, name="positions"):
    """Shape and dtype of device positions, from their metadata (finiteness is checked on the device)."""
    shape = tuple(x.shape)
    dtype = np.dtype(x.dtype)
    if dtype.kind != "f":
        raise TypeError(f"`{name}` must be a floating-point array (float32 or float64), got dtype {dtype}")
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"`{name}` on the GPU must be float32 or float64, got dtype {dtype}")
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"`{name}` must have shape (N, 3), got {shape}")
    if shape[0] > MAX_ATOMS:
        raise MemoryError(
            f"`{name}` has {shape[0]} atoms, more than fastfeat handles in one call ({MAX_ATOMS}); split the structure"
        )
    return shape[0], dtype


def nonfinite_error(pos, bad, stream, name="positions", offset=0, prefix=""):
    row = download(pos[bad:bad + 1], stream)[0]
    return ValueError(
        f"{prefix}`{name}` must be finite, got {row.tolist()} (NaN or inf) for atom {bad - offset}"
    )


# ------------------------------------------------------------------ the builder
@dataclass
class DeviceNeighbors:
    """Device arrays of a (batched) neighbour list.

    offset_n : (N + 1,) int64   pairs of atom i are offset_n[i]:offset_n[i+1]
    order_n : (N,) int32        atoms in bin order (spatially coherent; used to schedule work)
    n_pairs : int
    Full lists add i_p, j_p (P,) int32, shift_pc (P, 3) int32, r_pc (P, 3), d_p (P,);
    CSR lists add j_p and rbuild_pc (P, 3): r_ij at the build in Å, from the float64 positions (the
    feature kernels add the displacements since the build).
    """

    offset_n: object
    order_n: object
    n_pairs: int
    i_p: object = None
    j_p: object = None
    shift_pc: object = None
    r_pc: object = None
    d_p: object = None
    rbuild_pc: object = None


def build_device(pos, atom_start, cells, pbcs, cutoff, stream, *, csr, out_dtype, prefixes=None, name="positions"):
    """Cell-list neighbour list of a batch of structures on the device (validated host arguments).

    Parameters
    ----------
    pos : (N, 3) float32/float64 Numba device array, Å
        Positions of all structures, concatenated. Checked for finiteness here.
    atom_start : (S + 1,) int64 host array
        Atoms of structure s are atom_start[s]:atom_start[s + 1].
    cells : (S, 3, 3) float64 host array, Å;  pbcs : (S, 3) bool host array
    cutoff : float, Å
    csr : bool
        True: (j, pair vector at the build) for the feature kernels; False: the full list.
    out_dtype : float dtype of r_pc, d_p or rbuild_pc (computed in float64, then cast).
    prefixes : list of str, optional
        Error-message prefix of each structure ("structure k: ").
    """
    cuda = _cuda()
    k = _kernels()
    n = pos.shape[0]
    s_count = len(cells)
    prefixes = prefixes or [""] * s_count
    atom_start = np.asarray(atom_start, np.int64)
    inv_boxes = np.array([np.linalg.inv(binning_box(cells[s], pbcs[s])) for s in range(s_count)]).reshape(-1, 3, 3)

    d_atom_start = upload(atom_start, stream)
    struct_n = alloc(n, np.int32)
    launch(k.structure_ids, n, stream, d_atom_start, struct_n)
    d_inv = upload(inv_boxes, stream)
    smin = upload(np.full((s_count, 3), np.inf), stream)
    smax = upload(np.full((s_count, 3), -np.inf), stream)
    bad = upload(np.array([n], np.int64), stream)
    launch(k.bounding_box, n, stream, pos, struct_n, d_inv, smin, smax, bad)
    smin_h = download(smin, stream)
    smax_h = download(smax, stream)
    bad_h = int(download(bad, stream)[0])
    if bad_h < n:
        s = int(np.searchsorted(atom_start, bad_h, side="right") - 1)
        raise nonfinite_error(pos, bad_h, stream, name, atom_start[s], prefixes[s])

    grids = []
    for s in range(s_count):
        a0, a1 = int(atom_start[s]), int(atom_start[s + 1])
        lo, hi = (smin_h[s], smax_h[s]) if a1 > a0 else (np.zeros(3), np.zeros(3))
        try:
            g = bin_grid(cells[s], pbcs[s], cutoff, a1 - a0, smin=lo, smax=hi)
            if g.sparse:  # atoms in a small part of a large box: a grid from the positions (see _box)
                g = bin_grid(cells[s], pbcs[s], cutoff, a1 - a0,
                             positions=download(pos[a0:a1], stream).astype(np.float64))
        except ValueError as exc:
            raise ValueError(prefixes[s] + str(exc)) from None
        grids.append(g)
        if a1 > a0:
            _check_wraps_device(g, lo, hi, pos[a0:a1], stream, prefixes[s])
    bin_base = np.zeros(s_count + 1, np.int64)
    np.cumsum([g.n_cells for g in grids], out=bin_base[1:])
    n_cells = int(bin_base[-1])
    d_cell = upload(np.asarray(cells, np.float64).reshape(-1, 3, 3), stream)
    d_inv = upload(np.array([g.inv_box for g in grids]).reshape(-1, 3, 3), stream)
    # searched with periodic images (a periodic axis cut at an empty stretch is not), wrapped (periodic)
    d_periodic = upload(np.array([g.periodic for g in grids], bool).reshape(-1, 3), stream)
    d_wrapped = upload(np.array([g.wrapped for g in grids], bool).reshape(-1, 3), stream)
    d_origin = upload(np.array([g.wrap_origin for g in grids]).reshape(-1, 3), stream)
    d_smin = upload(np.array([g.smin for g in grids]).reshape(-1, 3), stream)
    d_extent = upload(np.array([g.extent for g in grids]).reshape(-1, 3), stream)
    r_max = max([g.region_lo.shape[1] for g in grids] + [1])
    region_lo = np.zeros((s_count, 3, r_max))
    region_at = np.zeros((s_count, 3, r_max))
    region_scale = np.ones((s_count, 3, r_max))
    for s, g in enumerate(grids):
        region_lo[s, :, : g.region_lo.shape[1]] = g.region_lo
        region_at[s, :, : g.region_at.shape[1]] = g.region_at
        region_scale[s, :, : g.region_scale.shape[1]] = g.region_scale
    d_region_lo = upload(region_lo, stream)
    d_region_at = upload(region_at, stream)
    d_region_scale = upload(region_scale, stream)
    d_n_regions = upload(np.array([g.n_regions for g in grids], np.int64).reshape(-1, 3), stream)
    d_nbins = upload(np.array([g.nbins for g in grids], np.int64).reshape(-1, 3), stream)
    d_search = upload(np.array([g.search for g in grids], np.int64).reshape(-1, 3), stream)
    d_bin_base = upload(bin_base, stream)

    # cell assignment -> counting -> prefix sum -> scatter (stable)
    posw = alloc((n, 3), np.float64)
    wrap = alloc((n, 3), np.int32)
    bin3 = alloc((n, 3), np.int64)
    bin_n = alloc(n, np.int64)
    launch(k.assign_cells, n, stream, pos, struct_n, d_cell, d_inv, d_periodic, d_wrapped, d_origin, d_smin, d_extent,
           d_region_lo, d_region_at, d_region_scale, d_n_regions, d_nbins, d_bin_base, posw, wrap, bin3, bin_n)
    count_b = alloc(n_cells, np.int64)
    fill(count_b, 0, stream)
    launch(k.count_cells, n, stream, bin_n, count_b)
    start_b = alloc(n_cells + 1, np.int64)
    exclusive_scan(count_b, start_b, stream)
    fill(count_b, 0, stream)  # reused as the per-bin fill pointer
    tmp_order = alloc(n, np.int32)
    launch(k.scatter_atoms, n, stream, bin_n, start_b, count_b, tmp_order)
    order_n = alloc(n, np.int32)
    posw_sorted = alloc((n, 3), np.float64)
    launch(k.stable_order, n, stream, bin_n, start_b, tmp_order, posw, order_n, posw_sorted)
    del tmp_order, count_b

    # pair search: count -> prefix sum -> fill
    count_n = alloc(n, np.int64)
    launch(k.count_pairs, n, stream, posw_sorted, order_n, struct_n, d_cell, d_periodic, d_nbins, d_search,
           d_bin_base, bin3, start_b, pair_r2_limit(cutoff), count_n)
    offset_n = alloc(n + 1, np.int64)
    exclusive_scan(count_n, offset_n, stream)
    n_pairs = int(download(offset_n[n:], stream)[0])
    itemsize = np.dtype(out_dtype).itemsize
    common = (posw_sorted, order_n, struct_n, d_cell, wrap, d_periodic, d_nbins, d_search, d_bin_base, bin3,
              start_b, pair_r2_limit(cutoff), offset_n)
    if csr:
        check_device_memory(n_pairs * (4 + 3 * itemsize), f"the neighbour list ({n_pairs} pairs)")
        j_p = alloc(n_pairs, np.int32)
        rbuild = alloc((n_pairs, 3), out_dtype)
        launch(k.fill_csr, n, stream, *common, j_p, rbuild)
        return DeviceNeighbors(offset_n, order_n, n_pairs, j_p=j_p, rbuild_pc=rbuild)
    check_device_memory(n_pairs * (20 + 4 * itemsize), f"the neighbour list ({n_pairs} pairs)")
    i_p = alloc(n_pairs, np.int32)
    j_p = alloc(n_pairs, np.int32)
    shift = alloc((n_pairs, 3), np.int32)
    r = alloc((n_pairs, 3), out_dtype)
    d = alloc(n_pairs, out_dtype)
    launch(k.fill_pairs, n, stream, *common, i_p, j_p, shift, r, d)
    return DeviceNeighbors(offset_n, order_n, n_pairs, i_p=i_p, j_p=j_p, shift_pc=shift, r_pc=r, d_p=d)


def _check_wraps_device(grid, smin, smax, pos, stream, prefix):
    """The CPU path's MAX_WRAP refusal (fastfeat._neighbors._check_wraps), from the structure's bounding box in
    fractional coordinates: an atom more than MAX_WRAP cells out along a wrapped axis would overflow the int32
    wrap counts and silently lose its pairs. The atom is found on the host, on this error path only."""
    from ._box import _binning_coordinates
    from ._neighbors import MAX_WRAP, _check_wraps

    wrapped = np.asarray(grid.wrapped, bool)
    if not wrapped.any():
        return
    origin = np.asarray(grid.wrap_origin, np.float64)
    with np.errstate(invalid="ignore"):
        far = (np.floor(np.asarray(smin) - origin) < -MAX_WRAP) | (np.floor(np.asarray(smax) - origin) > MAX_WRAP)
    if not (far & wrapped).any():
        return
    frac = _binning_coordinates(download(pos, stream).astype(np.float64), grid.inv_box)
    try:  # the wrap counts the device would store (as floats: no int overflow here), checked as on the CPU
        _check_wraps(np.where(wrapped, np.floor(frac - origin), 0.0))
    except ValueError as exc:
        raise ValueError(prefix + str(exc)) from None


def _sort_device(nl, stream):
    k = _kernels()
    p = nl.n_pairs
    check_device_memory(p * (20 + 4 * np.dtype(nl.r_pc.dtype).itemsize), f"sorting the neighbour list ({p} pairs)")
    out = (alloc(p, np.int32), alloc(p, np.int32), alloc((p, 3), np.int32), alloc((p, 3), nl.r_pc.dtype),
           alloc(p, nl.d_p.dtype))
    launch(k.sort_segments, p, stream, nl.offset_n, nl.i_p, nl.j_p, nl.shift_pc, nl.r_pc, nl.d_p, *out)
    return out


def device_positions(positions, dtype=None, name="positions"):
    """(Numba device array, n) of positions: device arrays are checked by metadata, host arrays fully and uploaded."""
    dev = as_device(positions)
    if dev is not None:
        n, _ = check_device_positions(dev, name)
        return dev, n, True
    host = check_positions(positions, dtype=dtype, name=name)
    return host, host.shape[0], False


def neighbor_list_cuda(positions, cell, pbc, cutoff, *, sorted=False):
    """CUDA implementation of :func:`fastfeat.neighbor_list` (`pbc`, `cutoff` already checked).

    Returns a NeighborList of device arrays (CuPy when available, else Numba):
    i, j (P,) int32; shifts (P, 3) int32; vectors (P, 3) and distances (P,)
    in the dtype of the positions, Å. Pairs are ordered by centre atom, in the
    same order as the CPU implementation.
    """
    cell = check_cell(cell, pbc)
    stream = current_stream()
    pos, n, on_device = device_positions(positions)
    if not on_device:
        pos = upload(pos, stream)
    dtype = np.dtype(pos.dtype)
    if n == 0:
        return NeighborList(*(to_user(alloc(shape, dt)) for shape, dt in (
            (0, np.int32), (0, np.int32), ((0, 3), np.int32), ((0, 3), dtype), (0, dtype))))
    nl = build_device(pos, np.array([0, n]), cell[None], pbc[None], cutoff, stream, csr=False, out_dtype=dtype)
    arrays = (nl.i_p, nl.j_p, nl.shift_pc, nl.r_pc, nl.d_p)
    if sorted and nl.n_pairs:
        arrays = _sort_device(nl, stream)
    return NeighborList(*(to_user(a) for a in arrays))
