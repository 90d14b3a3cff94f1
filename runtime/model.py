"""ForceModel: a fastfeat ONNX model run by onnxruntime, on CPU or CUDA.

Loading validates the file (see :mod:`fastfeat.runtime._onnx_meta`); nothing
in a model file is executed as code: onnxruntime parses the graph and no
custom-op library is ever registered.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import onnxruntime as ort

import fastfeat
from fastfeat._io import MODELS_DIR, bundled_model_names, file_sha256, names_path
from fastfeat._threads import InUse
from fastfeat._validation import (
    check_cell,
    check_device,
    check_feature_arrays,
    check_int,
    check_number,
    check_pbc,
    check_skin,
    species_index,
    species_lookup,
)

from ._onnx_meta import (
    EV_PER_ANGSTROM,
    INPUT_NAMES,
    OUTPUT_NAME,
    ModelInfo,
    ModelLoadError,
    check_signature,
    describe_unparsable,
    read_model_info,
)
from .extrapolation import DEFAULT_TOLERANCE

__all__ = ["ForceModel", "ForceEvaluator", "ModelLoadError", "pretrained_names", "resolve_model"]

def pretrained_names() -> list:
    """Names of the bundled models present in this installation."""
    return bundled_model_names()


def resolve_model(model, device="cpu", **kwargs):
    """A ForceModel from a ForceModel, a file path or a bundled model's name."""
    if isinstance(model, ForceModel):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"`model` must be a ForceModel, a path or a bundled model name, got {type(model).__name__}")
    text = os.fspath(model)
    if names_path(text, pretrained_names()) or text.endswith(".onnx") or os.sep in text:
        return ForceModel.load(text, device=device, **kwargs)
    return ForceModel.pretrained(text, device=device, **kwargs)


def _cupy():
    try:
        import cupy
    except Exception as exc:  # not installed, or no CUDA runtime
        raise RuntimeError(
            f"device='cuda' needs CuPy, which cannot be imported ({exc}); install fastfeat[gpu]"
        ) from None
    return cupy


def _check_cuda_runtime():
    """RuntimeError unless onnxruntime's CUDA EP, CuPy and a GPU are all usable."""
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise RuntimeError(
            f"device='cuda' was requested but onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            f"(available: {providers}); install onnxruntime-gpu (fastfeat[gpu]) instead of onnxruntime"
        )
    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels only if loaded first
        # (torch would do it on import; the runtime never imports torch)
        try:
            ort.preload_dlls()
        except Exception:  # missing libraries surface below as a provider that failed to start
            pass
    from fastfeat._device import require_cuda

    require_cuda()
    cp = _cupy()
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"device='cuda' was requested but CuPy finds no usable GPU ({exc})") from None
    if n < 1:
        raise RuntimeError("device='cuda' was requested but CuPy finds no GPU")
    return cp


class ForceModel:
    """A direct-force model: features from fastfeat, forces from onnxruntime.

    Use :meth:`load` or :meth:`pretrained`; do not call the constructor.

    Attributes
    ----------
    spec : fastfeat.FeatureSpec
        Features the model consumes.
    info : ModelInfo
        The model's metadata (head, units, training data hash, validation metrics ...).
    device : str
        "cpu" or "cuda".
    dtype : numpy.dtype
        Precision of features and forces inside the model (float32 or float64).
    path : str
        File the model was read from.
    target : str
        The per-atom quantity the model learned (metadata ``fastfeat.target``,
        "forces" when absent). A model of another target (e.g. "dipole") still
        loads, so its metadata can be inspected, but every force method
        (:meth:`forces`, :meth:`forces_batch`, :meth:`forces_from_features`,
        :meth:`evaluator`), the Calculator, MD and check-conservation refuse it
        with a ValueError: its outputs are not forces. ``fastfeat evaluate MODEL
        DATA`` compares such a model's per-atom vectors with reference data.

    Notes
    -----
    Thread safety: one ForceModel may be used from several threads. The
    onnxruntime session is shared (its ``run`` is thread-safe); every thread
    gets its own featurizer, buffers and IOBinding.

    Pickling (``multiprocessing``, ``copy.deepcopy``, a pickled Calculator): a
    model pickles as a reference to its file (:attr:`path`) and is loaded again
    with the same device, threads and skin where it is unpickled, so the file
    must be readable there, and unchanged: a file rewritten since the load (a
    new ``fastfeat train --out`` at the same path) is refused with a
    ModelLoadError, not served as this model. Workers started by ``fork`` after the parent computed
    forces cannot run the CPU kernels under GNU OpenMP (a RuntimeError says so):
    use the ``spawn`` or ``forkserver`` start method.
    """

    def __init__(self, session, info: ModelInfo, path: str, device: str, skin: float, intra_op_threads=1,
                 file_sha256=None):
        self._session = session
        self._file_sha256 = file_sha256  # of the file as loaded: a copy (see __reduce__) must load the same file
        self._intra_op_threads = intra_op_threads
        self.info = info
        self.spec = info.spec
        self.dtype = info.dtype
        self.path = path
        self.target = info.target
        self.device = device
        self.skin = float(skin)
        self._lookup = species_lookup(self.spec.numbers)
        self._local = threading.local()

    # ------------------------------------------------------------ construction
    @classmethod
    def load(cls, path, device="cpu", *, intra_op_threads=1, skin=1.0) -> "ForceModel":
        """Read and validate a fastfeat ONNX model.

        Parameters
        ----------
        path : str or os.PathLike
            ``.onnx`` file written by ``fastfeat.train.export`` (model format <= 1).
        device : {"cpu", "cuda"}
            Where features and inference run.
        intra_op_threads : int
            onnxruntime intra-op threads (default 1, best for small systems
            where the featurizer's threads would compete with onnxruntime's;
            raise it for thousands of atoms on CPU; 0: onnxruntime's default).
            Idle onnxruntime threads do not spin.
        skin : float
            Verlet skin (Å) of the featurizer's neighbour list: a finite number >= 0.

        Raises
        ------
        FileNotFoundError
            No file at ``path``.
        ModelLoadError (a ValueError)
            Truncated or non-ONNX file, missing or newer metadata, a FeatureSpec
            this fastfeat does not understand, or inputs/outputs that do not
            match the contract.
        ValueError
            ``skin`` is not a finite number >= 0, or ``intra_op_threads`` is not an int >= 0.
        RuntimeError
            ``device="cuda"`` without a usable GPU, CuPy or CUDA execution provider.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"`path` must be a file path, got {type(path).__name__}")
        path = os.fspath(path)
        dev = check_device(device)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file {path!r} does not exist")
        if os.path.isdir(path):
            raise ModelLoadError(f"model path {path!r} is a directory, expected an .onnx file")
        if intra_op_threads is not None:
            intra_op_threads = check_int(intra_op_threads, "`intra_op_threads`", 0, " (0: onnxruntime's default)")
        skin = check_skin(skin)
        if dev == "cuda":
            _check_cuda_runtime()
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        digest = file_sha256(path)
        try:
            session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(describe_unparsable(path, exc)) from None
        if dev == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(
                f"device='cuda' was requested but onnxruntime could not start its CUDA execution provider "
                f"for {path!r} (session providers: {session.get_providers()}); check the CUDA/cuDNN libraries"
            )
        meta = dict(session.get_modelmeta().custom_metadata_map)
        info = read_model_info(meta, path)
        check_signature(session, info, path)
        # the absolute path: a model pickles as a reference to its file (see __reduce__), which must hold
        # after a change of working directory
        return cls(session, info, os.path.abspath(path), dev, skin, intra_op_threads, digest)

    def __reduce__(self):
        # an onnxruntime session cannot be pickled: a model pickles (and deep-copies) as a reference to
        # its file and is loaded again, with the same device and options, where it is unpickled (e.g. in
        # the workers of a multiprocessing pool)
        return _load_model, (self.path, self.device, self._intra_op_threads, self.skin, self._file_sha256)

    @classmethod
    def pretrained(cls, name, device="cpu", **kwargs) -> "ForceModel":
        """Load a bundled model by name ("peo", "li4p2o7", "li4p2o7-water")."""
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a bundled model name (str), got {type(name).__name__}")
        available = pretrained_names()
        if name not in available:
            where = f"in {MODELS_DIR}" if available else f"({MODELS_DIR} holds no .onnx file)"
            raise ValueError(f"no bundled model named {name!r}; available: {available} {where}")
        return cls.load(MODELS_DIR / f"{name}.onnx", device=device, **kwargs)

    def __repr__(self):
        return (f"ForceModel({self.path!r}, device={self.device!r}, species={list(self.spec.species)}, "
                f"head={self.info.head!r}, dtype={self.dtype.name}"
                + ("" if self.predicts_forces else f", target={self.target!r}") + ")")

    # ------------------------------------------------------------------- API
    @property
    def providers(self) -> list:
        return self._session.get_providers()

    @property
    def predicts_forces(self) -> bool:
        """True when the model's target is "forces" (see :attr:`target`)."""
        return self.target == "forces"

    def require_forces(self) -> None:
        """ValueError unless the model predicts forces (its ``fastfeat.target`` is "forces") in eV/Å (its
        ``fastfeat.units`` "force", when present)."""
        if not self.predicts_forces:
            raise ValueError(
                f"model {self.path!r} predicts {self.target!r}, not forces (metadata `fastfeat.target`); "
                "it cannot be used as a force field (forces, Calculator, MD, relax, check-conservation, demo); "
                "`fastfeat evaluate MODEL DATA` compares its per-atom vectors with reference data"
            )
        unit = self.info.units.get("force", EV_PER_ANGSTROM[0])
        if unit not in EV_PER_ANGSTROM:
            raise ValueError(
                f"model {self.path!r} predicts forces in {unit!r} (metadata `fastfeat.units`), not eV/Å, the unit "
                "of ASE and of fastfeat's forces, Calculator, MD and relax; train it again on forces in eV/Å "
                "(1 kcal/mol/Å = 0.0433641 eV/Å); `fastfeat evaluate MODEL DATA` still compares it with reference data"
            )

    def species_index(self, numbers) -> np.ndarray:
        """(N,) int64 species indices of atomic numbers; ValueError naming an unknown symbol."""
        numbers = np.asarray(numbers)
        if numbers.ndim != 1:
            raise ValueError(f"`numbers` must have shape (N,), got {numbers.shape}")
        return species_index(numbers, self._lookup, numbers.shape[0], self.spec.species).astype(np.int64)

    @property
    def feature_range(self):
        """``{symbol: (min, max)}``: per element, the training range of every invariant column
        (metadata ``fastfeat.feature_range``); None for a file exported without it."""
        return self.info.feature_range

    def extrapolation(self, atoms, tolerance=DEFAULT_TOLERANCE):
        """Which atoms of ``atoms`` have invariant features outside the model's training range.

        Parameters
        ----------
        atoms : ase.Atoms
        tolerance : float
            Excess (in units of a column's training range) up to which an atom still counts as inside.
            The default, 0.1 % of the range, absorbs the rounding of float32 features, whose
            summation order differs between a structure featurized alone and in a batch.

        Returns
        -------
        fastfeat.runtime.extrapolation.Extrapolation
            ``.atoms`` (indices), ``.fraction``, ``.excess`` per atom, ``.summary()``.

        Raises
        ------
        ValueError
            The model file holds no training ranges (exported before fastfeat stored them), or an
            element is not one of the model's species.
        """
        from .extrapolation import extrapolation

        _check_atoms(atoms, "atoms")
        tolerance = check_number(tolerance, "`tolerance`", 0.0)
        if self.feature_range is None:
            raise ValueError(f"model {self.path!r} holds no training feature ranges (metadata "
                             "`fastfeat.feature_range`): it was exported before fastfeat stored them; a model trained "
                             "again with `fastfeat train` has them")
        f = self._featurize(atoms, "cpu")  # the model's dtype: the ranges were taken from features of it
        return extrapolation(np.asarray(f.invariant), np.asarray(f.species), self.spec, self.feature_range,
                             tolerance)

    def _featurize(self, structures, device):
        """``fastfeat.featurize`` with the model's spec and dtype (thread-safe: see ``fastfeat._threads``)."""
        return fastfeat.featurize(structures, self.spec, device=device, dtype=self.dtype)

    def evaluator(self, numbers, cell, pbc) -> "ForceEvaluator":
        """A low-overhead force function for one fixed system (MD).

        See :class:`ForceEvaluator`. ValueError if the model does not predict
        forces (see :attr:`target`).
        """
        return ForceEvaluator(self, numbers, cell, pbc)

    def forces(self, atoms) -> np.ndarray:
        """Forces on the atoms of one structure.

        Parameters
        ----------
        atoms : ase.Atoms

        Returns
        -------
        (N, 3) float64 ndarray
            Forces in eV/Å (the model's target unit), a new array.

        Raises
        ------
        TypeError
            ``atoms`` is not one ase.Atoms (use :meth:`forces_batch` for several).
        ValueError
            The model does not predict forces (see :attr:`target`), or an
            element is not one of the model's species.
        """
        self.require_forces()
        _check_atoms(atoms, "atoms", "; for several structures use forces_batch(list_of_atoms)")
        ev = self._thread_evaluator(atoms.numbers, atoms.cell.array, atoms.pbc)
        if self.device == "cuda":
            return ev(ev.xp.asarray(atoms.positions, dtype=np.float64)).get()
        return ev(atoms.positions).copy()

    def _thread_evaluator(self, numbers, cell, pbc):
        """This thread's evaluator for the system, kept among the last few systems the thread asked for (two
        calculators alternating on different structures rebuilt everything on every call)."""
        evs = getattr(self._local, "evaluators", None)
        if evs is None:
            evs = self._local.evaluators = []
        for k, ev in enumerate(evs):
            if ev.same_system(numbers, cell, pbc):
                if k:
                    evs.insert(0, evs.pop(k))
                return ev
        ev = self.evaluator(numbers, cell, pbc)
        evs.insert(0, ev)
        # at most _KEPT_EVALUATORS, and the older ones only while they are small: a stream of different
        # large structures keeps one
        atoms = 0
        for k in range(1, len(evs)):
            atoms += evs[k].n_atoms
            if k >= _KEPT_EVALUATORS or atoms > _KEPT_ATOMS:
                del evs[k:]
                break
        return ev

    def forces_batch(self, atoms_list) -> list:
        """Forces of several structures in one onnxruntime call.

        Parameters
        ----------
        atoms_list : sequence of ase.Atoms

        Returns
        -------
        list of (N_i, 3) float64 ndarray
            eV/Å, one per structure.
        """
        self.require_forces()
        from ase import Atoms

        if isinstance(atoms_list, Atoms):
            raise TypeError("`atoms_list` must be a sequence of ase.Atoms, got one ase.Atoms; "
                            "use forces(atoms) for one structure")
        try:
            atoms_list = list(atoms_list)
        except TypeError:
            raise TypeError(f"`atoms_list` must be a sequence of ase.Atoms, got {type(atoms_list).__name__}") from None
        for k, atoms in enumerate(atoms_list):
            _check_atoms(atoms, f"atoms_list[{k}]")
        if not atoms_list:
            return []
        # featurize validates every structure (unknown species: "structure k: atom i is X ...")
        feats = self._featurize(atoms_list, self.device)
        f_nc = self.forces_from_features(feats.invariant, feats.covariant, feats.species)
        offsets = np.asarray(feats.offsets)
        return [f_nc[offsets[k]:offsets[k + 1]] for k in range(len(atoms_list))]

    def forces_from_features(self, invariant, covariant, species) -> np.ndarray:
        """Run the network on precomputed features.

        Parameters
        ----------
        invariant : (N, n_invariant) array
        covariant : (N, n_covariant, 3) array
        species : (N,) int array
            Index into ``spec.species``, each in ``[0, spec.n_species)``.

        Returns
        -------
        (N, 3) float64 ndarray
            Forces (eV/Å), on the host.

        Raises
        ------
        TypeError
            ``species`` is not an integer array, or the features are not
            floating-point (complex, string, bool or object arrays).
        ValueError
            The model does not predict forces, the shapes do not match each
            other and the spec, a feature is NaN or inf, or a species index is
            out of range (each naming the first such atom).
        """
        self.require_forces()
        xp = _cupy() if self.device == "cuda" else np
        invariant, covariant, species = check_feature_arrays(self.spec, invariant, covariant, species, xp)
        n = species.shape[0]
        if n == 0:
            return np.zeros((0, 3))
        if self.device == "cuda":
            cp = xp
            g = cp.ascontiguousarray(invariant, dtype=self.dtype)
            v = cp.ascontiguousarray(covariant, dtype=self.dtype)
            s = cp.ascontiguousarray(species, dtype=cp.int64)
            f = cp.empty((n, 3), dtype=self.dtype)
            io = self._session.io_binding()
            _bind(io, "cuda", g, v, s, f)
            cp.cuda.Device().synchronize()
            self._run(lambda: self._session.run_with_iobinding(io), n)
            return cp.asnumpy(f).astype(np.float64)
        feeds = {
            "invariant": np.ascontiguousarray(invariant, dtype=self.dtype),
            "covariant": np.ascontiguousarray(covariant, dtype=self.dtype),
            "species": np.ascontiguousarray(species, dtype=np.int64),
        }
        out = self._run(lambda: self._session.run([OUTPUT_NAME], feeds)[0], n)
        if out.shape != (n, 3):  # the declared output shape is checked at load; the graph may still differ
            raise RuntimeError(f"model {self.path!r} returned `{OUTPUT_NAME}` of shape {out.shape} for {n} atoms, "
                               f"expected ({n}, 3): the file does not keep the model contract")
        return out.astype(np.float64)

    def _run(self, call, n_atoms):
        """``call()`` (an onnxruntime run), its errors re-raised as RuntimeError naming the model."""
        try:
            return call()
        except Exception as exc:  # onnxruntime raises its own exception types
            raise self._run_error(exc, n_atoms) from None

    def _run_error(self, exc, n_atoms):
        return RuntimeError(f"onnxruntime failed to run model {self.path!r} on {n_atoms} atoms: {exc}")


SHARED_EVALUATOR = (
    "this force evaluator is being called by another thread: it keeps its neighbour list, IOBinding and output "
    "buffers between calls, so each thread needs its own (model.evaluator(...) per thread; ForceModel.forces "
    "may be shared by threads)"
)

#: per thread, ForceModel.forces keeps the evaluators of this many recent systems, the older ones while they
#: hold at most _KEPT_ATOMS atoms together
_KEPT_EVALUATORS = 4
_KEPT_ATOMS = 20000


def _load_model(path, device, intra_op_threads, skin, file_sha256=None):
    """ForceModel.load with positional arguments (the unpickling of a ForceModel); ModelLoadError when the
    file is no longer the one the pickled model was loaded from."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist: a copied or unpickled ForceModel (e.g. in a "
                                f"worker process) loads its file again, so the file must stay where it was loaded")
    model = ForceModel.load(path, device, intra_op_threads=intra_op_threads, skin=skin)
    if file_sha256 is not None and model._file_sha256 != file_sha256:
        raise ModelLoadError(
            f"model file {path!r} changed since this model was loaded: a copied or unpickled ForceModel (e.g. in a "
            f"worker process, or a deep copy of atoms with a Calculator) loads its file again and would now be "
            f"another model; load the new file explicitly with ForceModel.load, or keep the original file")
    return model



def _check_atoms(atoms, name, hint=""):
    """TypeError unless ``atoms`` is one ase.Atoms."""
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise TypeError(f"`{name}` must be one ase.Atoms, got {type(atoms).__name__}{hint}")


def _check_positions_shape(positions, n_atoms):
    """ValueError unless ``positions`` (any array-like) has shape (n_atoms, 3)."""
    shape = np.shape(positions) if not hasattr(positions, "shape") else tuple(positions.shape)
    if shape != (n_atoms, 3):
        raise ValueError(f"`positions` must have shape ({n_atoms}, 3), the evaluator's system, got {shape}")


def _ptr(arr):
    return arr.data.ptr if hasattr(arr.data, "ptr") else arr.ctypes.data


def _bind(io, where, g, v, s, f):
    """Bind contiguous feature/species/force buffers (numpy or CuPy) by pointer."""
    for name, arr in zip(INPUT_NAMES, (g, v, s)):
        io.bind_input(name, where, 0, arr.dtype.type, tuple(arr.shape), _ptr(arr))
    io.bind_output(OUTPUT_NAME, where, 0, f.dtype.type, tuple(f.shape), _ptr(f))


class ForceEvaluator:
    """Forces of one fixed system (composition, cell, pbc) for changing positions.

    Made by :meth:`ForceModel.evaluator`. Holds a ``fastfeat.Featurizer``
    (neighbour list reused within the model's skin, rebuilt automatically),
    preallocated buffers and an onnxruntime IOBinding bound to them, so a
    call costs the features, the network and little else. One evaluator per
    thread: a call while another thread is inside one raises a RuntimeError
    (``ForceModel.forces`` may be shared; it keeps one per thread).

    Parameters
    ----------
    model : ForceModel
    numbers : (N,) int array
        Atomic numbers.
    cell : (3, 3) array
        Cell vectors as rows (Å).
    pbc : bool or (3,) bool array

    Attributes
    ----------
    xp : module
        ``numpy`` (device "cpu") or ``cupy`` (device "cuda"): the array module
        of positions passed in and forces returned.
    n_atoms : int
    """

    def __init__(self, model: ForceModel, numbers, cell, pbc):
        model.require_forces()
        self.model = model
        # checked as featurize checks them: integer atomic numbers of the model's species, a (3, 3) cell
        # (None: none, for a non-periodic system), pbc a bool or 3 bools
        species = model.species_index(numbers)
        self.numbers = np.array(numbers, dtype=np.int64)
        self.n_atoms = len(self.numbers)
        self.pbc = check_pbc(pbc)
        self.cell = check_cell(cell, self.pbc)
        self.device = model.device
        dtype = model.dtype
        for arr in (self.numbers, self.cell, self.pbc):  # the featurizer relies on their staying unchanged
            arr.flags.writeable = False
        self._system = (self.numbers, self.cell, self.pbc)
        self._session = model._session
        self._fz = fastfeat.Featurizer(model.spec, device=self.device, dtype=dtype, skin=model.skin)
        self._busy = InUse(SHARED_EVALUATOR)
        self._io = self._session.io_binding()
        self._g = self._v = None
        self._bounds = None
        n = self.n_atoms
        if self.device == "cuda":
            cp = _cupy()
            self.xp = cp
            self._where = "cuda"
            self._sync = cp.cuda.Device().synchronize
            self._species = cp.asarray(species)
            self._f_model = cp.empty((n, 3), dtype=dtype)
            self._out = cp.empty((n, 3), dtype=np.float64)
            self._numbers_arg = cp.asarray(self.numbers)  # species looked up on the device
        else:
            self.xp = np
            self._where = "cpu"
            self._sync = None
            self._species = species
            self._f_model = np.empty((n, 3), dtype=dtype)
            self._out = np.empty((n, 3), dtype=np.float64)
            self._numbers_arg = self.numbers
        io = self._io
        if n:
            io.bind_input("species", self._where, 0, np.int64, (n,), _ptr(self._species))
            io.bind_output(OUTPUT_NAME, self._where, 0, dtype.type, (n, 3), _ptr(self._f_model))
        self._same_dtype = dtype == np.float64

    @property
    def n_rebuilds(self) -> int:
        """Neighbour-list builds of the featurizer so far."""
        return int(self._fz.n_rebuilds)

    def __reduce__(self):
        # the onnxruntime session and IOBinding cannot be pickled: a copy is a new evaluator of the same model
        # (itself pickled as a reference to its file) and system, its neighbour list built at its first call
        return ForceEvaluator, (self.model, self.numbers, self.cell, self.pbc)

    def same_system(self, numbers, cell, pbc) -> bool:
        """True when (numbers, cell, pbc) are this evaluator's."""
        return (
            len(numbers) == self.n_atoms
            and np.array_equal(numbers, self._system[0])
            and np.array_equal(cell, self._system[1])
            and np.array_equal(np.broadcast_to(pbc, (3,)), self._system[2])
        )

    def outside_count(self):
        """Atoms whose invariant features at the latest call's positions lie outside the model's training
        ranges (:meth:`ForceModel.extrapolation`, default tolerance); None for a model without ranges or
        before the first call. Reads the features already computed: no featurization."""
        if self._g is None or self.model.feature_range is None:
            return None
        if self._bounds is None:  # first call: the bounds and the counting function, kept
            from ._range_kernel import count_outside, count_outside_array
            from .extrapolation import bounds

            lo, hi = bounds(self.model.spec, self.model.feature_range)
            count = count_outside if self.xp is np else count_outside_array
            self._bounds = (count, self.xp.asarray(lo), self.xp.asarray(hi))
        count, lo, hi = self._bounds
        return int(count(self._g, self._species, lo, hi))

    def __call__(self, positions):
        """Forces at ``positions``.

        Parameters
        ----------
        positions : (N, 3) float64 array (numpy, or CuPy on device "cuda")
            Cartesian positions in Å (need not be wrapped into the cell).

        Returns
        -------
        (N, 3) float64 array
            Forces in eV/Å. An internal buffer, overwritten by the next call:
            copy it to keep it.
        """
        if getattr(positions, "shape", None) != self._out.shape:  # before the featurizer blames `numbers`
            _check_positions_shape(positions, self.n_atoms)
        if self.n_atoms == 0:
            return self._out
        with self._busy:  # features, IOBinding and output buffers are this call's until it returns
            # numbers, cell and pbc are this evaluator's own read-only copies: the featurizer may skip their
            # checks (under the lock Numba's workqueue layer needs, see fastfeat._threads)
            _, cell, pbc = self._system
            g, v = self._fz._call_same_system(positions, self._numbers_arg, cell, pbc)
            if g is not self._g or v is not self._v:
                self._rebind(g, v)
            if self._sync is not None:
                self._sync()  # features come from other CUDA streams than onnxruntime's
            try:
                self._session.run_with_iobinding(self._io)
            except Exception as exc:  # onnxruntime's own exception types
                raise self.model._run_error(exc, self.n_atoms) from None
            if self._same_dtype:
                return self._f_model
            self._out[...] = self._f_model
            return self._out

    def _rebind(self, g, v):
        xp = self.xp
        g = xp.ascontiguousarray(g, dtype=self.model.dtype)
        v = xp.ascontiguousarray(v, dtype=self.model.dtype)
        n = self.n_atoms
        spec = self.model.spec
        if g.shape != (n, spec.n_invariant) or v.shape != (n, spec.n_covariant, 3):
            raise RuntimeError(
                f"featurizer returned invariant {g.shape} and covariant {v.shape}, expected "
                f"({n}, {spec.n_invariant}) and ({n}, {spec.n_covariant}, 3)"
            )
        self._io.bind_input("invariant", self._where, 0, g.dtype.type, g.shape, _ptr(g))
        self._io.bind_input("covariant", self._where, 0, v.dtype.type, v.shape, _ptr(v))
        self._g, self._v = g, v
