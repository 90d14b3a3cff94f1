"""Training configuration: defaults, TOML loading, validation.

A config file is TOML with top-level keys named like the fields of
:class:`TrainConfig` and an optional ``[spec]`` table: a complete FeatureSpec
(the keys of :meth:`fastfeat.FeatureSpec.to_dict` but ``format_version``: ``cutoff``,
``angular_cutoff``, ``radial``, ``angular``, ``covariant``, optional
``covariant_angular``; ``species`` may be left out, it then comes from the
data). The table replaces ``spec_preset``, it is not merged with it. Unknown
keys are an error that names the key and lists the valid ones; the config,
``[spec]`` included, is checked before any data is read::

    head = "projection"
    hidden = [64, 64]
    epochs = 300
    lr = 3e-3
    schedule = "cosine"

    [spec]
    cutoff = 5.2
    ...
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser (a dependency of the [train] extra there)
    import tomli as tomllib

from fastfeat._spec import SPEC_PRESETS, FeatureSpec

# not from .model: reading a config must not need torch
from ._defaults import ACTIVATIONS, EPS_ABS, EPS_REL, HEADS, INPUT_CLIP
from .data import check_forces_key

__all__ = ["TrainConfig", "load_config", "SCHEDULES", "DTYPES", "SPEC_REQUIRED", "SPEC_OPTIONAL"]

SCHEDULES = ("cosine", "plateau", "constant")
DTYPES = ("float32", "float64")
#: keys of the ``[spec]`` table: it is a complete FeatureSpec (not merged with ``spec_preset``)
SPEC_REQUIRED = ("cutoff", "angular_cutoff", "radial", "angular", "covariant")
SPEC_OPTIONAL = ("covariant_angular", "species")


def _ev_per_angstrom():
    """The runtime's spellings of eV/Å, imported only when a config names a force unit (importing
    fastfeat.runtime loads onnxruntime: reading a config stays light)."""
    from fastfeat.runtime._onnx_meta import EV_PER_ANGSTROM

    return EV_PER_ANGSTROM


@dataclass
class TrainConfig:
    """All settings of a training run (see the README for each key).

    Attributes
    ----------
    head : {"projection", "basis"}
    hidden : list of int
        Hidden widths of each element's MLP.
    activation : {"silu", "tanh"}
    eps_rel, eps_abs : float
        Projection-head regularisation ``ε = eps_rel·tr(VVᵀ)/3 + eps_abs``.
    gram : bool
        Feed the Gram entries ``V_k·V_l`` to the networks besides the invariants.
    input_clip : float
        Soft clip ``c·tanh(z/c)`` of the standardised inputs (0 = off).
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Structures per (global) batch; their atoms are concatenated.
    lr, weight_decay : float
        AdamW settings.
    schedule : {"cosine", "plateau", "constant"}
        Cosine annealing to ``lr·min_lr_ratio`` over ``epochs``, or
        ReduceLROnPlateau on the validation RMSE (factor ``plateau_factor``,
        patience ``plateau_patience``).
    patience : int
        Early stopping: epochs without a validation improvement (0 = off).
    seed : int
    dtype : {"float32", "float64"}
        Training precision (features and weights).
    export_dtype : {"float32", "float64"}
        Precision of the exported ONNX graph.
    target : str
        "forces" or the key of a per-atom (N, 3) array in the data.
    forces_key : str
        Where a data *file* keeps the reference forces when the target is forces: a per-atom
        array (an extxyz column such as ``REF_forces``) or a calculator result; default "forces".
        The model predicts forces whatever the key (``target`` would instead make it predict a
        quantity named after the key, which the runtime does not take as forces).
    target_unit : str
        Unit of the target, stored in the model ("" = eV/Å for forces; forces in any other unit are
        refused, as the runtime takes them in eV/Å).
    val_fraction : float
        Share of structures held out for validation when the data is a file.
    threads : int
        torch.set_num_threads (0 = leave torch's default).
    time_limit : float
        Stop after this many seconds of training (0 = no limit); the best
        model so far is kept.
    grad_clip : float
        Gradient-norm clip (0 = off).
    ema_decay : float
        Exponential moving average of the weights, updated after every
        optimiser step (0 = off): validation, the best-epoch choice and the
        exported model use the averaged weights. 0.99 lowers the test force
        error of the bundled oxide models by 3-5 %.
    cache_dir : str
        Where feature caches go ("" = $FASTFEAT_CACHE or ~/.cache/fastfeat).
    spec_preset : {"default", "dense", "angular", "angular-short", "ani1x"}
        FeatureSpec.default preset used when no [spec] is given.
    spec : dict
        A complete FeatureSpec, replacing ``spec_preset`` (not merged with it): ``cutoff``,
        ``angular_cutoff``, ``radial``, ``angular``, ``covariant``, optional ``covariant_angular``
        and ``species`` (default: the species of the data). Empty = use ``spec_preset``.
    """

    head: str = "projection"
    hidden: list = field(default_factory=lambda: [64, 64])
    activation: str = "silu"
    eps_rel: float = EPS_REL
    eps_abs: float = EPS_ABS
    gram: bool = True
    input_clip: float = INPUT_CLIP
    epochs: int = 200
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    patience: int = 30
    seed: int = 0
    dtype: str = "float32"
    export_dtype: str = "float32"
    target: str = "forces"
    forces_key: str = "forces"
    target_unit: str = ""
    val_fraction: float = 0.1
    threads: int = 0
    time_limit: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    cache_dir: str = ""
    spec_preset: str = "default"
    spec: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @classmethod
    def valid_keys(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self):
        """Check every value; ValueError/TypeError naming the key."""
        def need(cond, key, expect):
            if not cond:
                raise ValueError(f"config `{key}` must be {expect}, got {getattr(self, key)!r}")

        for key in ("epochs", "batch_size", "plateau_patience", "patience", "seed", "threads"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"config `{key}` must be an integer, got {type(v).__name__} {v!r}")
        for key in ("input_clip", "eps_rel", "eps_abs", "lr", "weight_decay", "min_lr_ratio", "plateau_factor",
                    "val_fraction", "time_limit", "grad_clip", "ema_decay"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"config `{key}` must be a number, got {type(v).__name__} {v!r}")
            try:
                finite = math.isfinite(v)
            except OverflowError:  # an int beyond the float range
                finite = False
            if not finite:
                raise ValueError(f"config `{key}` must be a finite number, got {v!r}")
            setattr(self, key, float(v))
        if not isinstance(self.gram, bool):
            raise TypeError(f"config `gram` must be true or false, got {type(self.gram).__name__} {self.gram!r}")
        for key in ("head", "activation", "schedule", "dtype", "export_dtype", "target", "forces_key", "target_unit",
                    "cache_dir", "spec_preset"):
            v = getattr(self, key)
            if not isinstance(v, str):
                raise TypeError(f"config `{key}` must be a string, got {type(v).__name__} {v!r}")
        need(self.head in HEADS, "head", f"one of {list(HEADS)}")
        need(self.spec_preset in SPEC_PRESETS, "spec_preset", f"one of {list(SPEC_PRESETS)}")
        need(self.activation in ACTIVATIONS, "activation", f"one of {list(ACTIVATIONS)}")
        need(self.schedule in SCHEDULES, "schedule", f"one of {list(SCHEDULES)}")
        need(self.dtype in DTYPES, "dtype", f"one of {list(DTYPES)}")
        need(self.export_dtype in DTYPES, "export_dtype", f"one of {list(DTYPES)}")
        if not isinstance(self.hidden, (list, tuple)) or not self.hidden or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden):
            raise ValueError(f"config `hidden` must be a non-empty list of positive integers, got {self.hidden!r}")
        self.hidden = list(self.hidden)
        need(self.epochs >= 1, "epochs", ">= 1")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.lr > 0, "lr", "> 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(0 < self.min_lr_ratio <= 1, "min_lr_ratio", "in (0, 1]")
        need(0 < self.plateau_factor < 1, "plateau_factor", "in (0, 1)")
        need(self.patience >= 0, "patience", ">= 0")
        need(self.seed >= 0, "seed", ">= 0")
        need(self.eps_rel >= 0, "eps_rel", ">= 0")
        need(self.input_clip >= 0, "input_clip", ">= 0 (0 = off)")
        need(self.eps_abs > 0, "eps_abs", "> 0")
        need(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)")
        need(self.threads >= 0, "threads", ">= 0")
        need(self.time_limit >= 0, "time_limit", ">= 0")
        need(self.grad_clip >= 0, "grad_clip", ">= 0")
        need(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0 = off)")
        need(self.target != "", "target", "a non-empty key")
        need(self.forces_key != "", "forces_key", "a non-empty key")
        if self.target == "forces" and self.target_unit and self.target_unit not in _ev_per_angstrom():
            raise ValueError(
                f"config `target_unit` = {self.target_unit!r}: forces are learned in eV/Å, the unit of ASE and of "
                "fastfeat's runtime (which refuses a force model in another unit); convert the reference forces "
                "(1 kcal/mol/Å = 0.0433641 eV/Å) and leave `target_unit` empty")
        check_forces_key(self.forces_key, self.target, "config `forces_key`")
        if not isinstance(self.spec, dict):
            raise TypeError(f"config `spec` must be a table of FeatureSpec fields, got {type(self.spec).__name__}")
        self._validate_spec()
        return self

    def _validate_spec(self):
        """The ``[spec]`` table is empty (use ``spec_preset``) or a complete, valid FeatureSpec."""
        spec_keys = set(SPEC_REQUIRED) | set(SPEC_OPTIONAL)
        unknown = sorted(set(self.spec) - spec_keys)
        if unknown:
            raise ValueError(f"unknown config key `spec.{unknown[0]}`; valid keys of [spec]: {sorted(spec_keys)}")
        if not self.spec:
            return
        missing = [k for k in SPEC_REQUIRED if k not in self.spec]
        if missing:
            raise ValueError(
                f"config [spec] is missing {', '.join(f'`spec.{k}`' for k in missing)}: the [spec] table is a "
                f"complete FeatureSpec that replaces `spec_preset` (it is not merged with the preset); it needs "
                f"{', '.join(SPEC_REQUIRED)} (optional: {', '.join(SPEC_OPTIONAL)}), got {', '.join(self.spec)}")
        # the values, before any data is read; without `species` (it comes from the data) a placeholder one
        try:
            FeatureSpec(**{"species": ("H",), **self.spec})
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"config [spec]: {exc}") from None

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (``None`` values are ignored), validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(self.valid_keys()))
        if unknown:
            raise ValueError(f"unknown config key `{unknown[0]}`; valid keys: {', '.join(self.valid_keys())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path=None, **overrides) -> TrainConfig:
    """Read a TOML config (or the defaults when ``path`` is None) and apply overrides.

    Raises
    ------
    ValueError
        An unknown key (named, with the list of valid keys) or an invalid value.
    FileNotFoundError
        ``path`` does not exist.
    """
    data = {}
    if path is not None:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"`--config` file {path!r} does not exist")
        if os.path.isdir(path):
            raise IsADirectoryError(f"`--config` {path!r} is a folder, not a TOML file")
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"`--config` file {path!r} is not valid TOML: {exc}") from None
    valid = TrainConfig.valid_keys()
    for key in data:
        if key not in valid:
            where = f" in {path!r}" if path else ""
            raise ValueError(f"unknown config key `{key}`{where}; valid keys: {', '.join(valid)}")
    cfg = TrainConfig(**data)
    return cfg.replace(**overrides)
