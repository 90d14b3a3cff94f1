"""ASE calculator for a fastfeat direct-force model."""

from __future__ import annotations

from ase.calculators.calculator import Calculator as _ASECalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes

from fastfeat._validation import check_device

from .model import ForceModel, resolve_model

__all__ = ["Calculator", "DIRECT_FORCES_NOTE"]

DIRECT_FORCES_NOTE = (
    "a fastfeat model predicts forces directly (Mailoa et al. 2019); they are not the gradient of an "
    "energy, so there is no potential energy, and no stress or virial either. Works: fastfeat's MD "
    "(`fastfeat md`, `fastfeat.runtime.run_md`) and ASE MD integrators (VelocityVerlet, Langevin) without "
    "a logfile or MDLogger, with observers added by `dyn.attach`. ASE optimizers (FIRE, BFGS, ...) and "
    "MDLogger call get_potential_energy() and need an energy: relax with `fastfeat relax` / "
    "`fastfeat.runtime.relax` (FIRE as ASE's, forces only) instead; `fastfeat check-conservation` measures how "
    "far the forces are from conservative"
)


class Calculator(_ASECalculator):
    """ASE calculator returning a fastfeat model's forces.

    Parameters
    ----------
    model : ForceModel, str or os.PathLike
        A loaded model, a model file or a bundled model's name.
    device : {"cpu", "cuda"}, optional
        Where a model given as a path or a name is loaded (default "cpu"); for a
        loaded ForceModel, None or its own device.
    skin, intra_op_threads : optional
        Passed to :meth:`ForceModel.load` for a model given as a path or a name
        (defaults: 1.0 Å, 1); a loaded ForceModel keeps its own.
    **kwargs
        ASE's calculator arguments (``atoms``, ``directory``, ``label``,
        ``restart``, ``ignore_bad_restart_file``); anything else is a TypeError.

    Raises
    ------
    ValueError
        The model does not predict forces (its ``fastfeat.target`` is e.g. "dipole"), or
        ``device``/``skin``/``intra_op_threads`` given with a loaded model that has others.
    TypeError
        An unknown keyword argument (a misspelt option was taken silently as an ASE parameter).

    Notes
    -----
    ``implemented_properties = ["forces"]``; asking for ``energy``,
    ``free_energy``, ``energies``, ``stress`` or ``stresses`` raises
    :class:`ase.calculators.calculator.PropertyNotImplementedError` with an
    explanation: direct forces are not the gradient of an energy. So ASE
    optimizers and ``MDLogger`` (which log the energy) fail
    (:func:`fastfeat.runtime.relax` relaxes with forces only); ASE MD
    integrators without a logfile, with observers via ``dyn.attach``, work,
    as do :func:`fastfeat.runtime.run_md` and ``fastfeat md``.
    Each thread uses its own featurizer and buffers, so calculators sharing
    one model may run in different threads.
    """

    implemented_properties = ["forces"]

    _ASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")

    def __init__(self, model, device=None, *, skin=None, intra_op_threads=None, **kwargs):
        unknown = sorted(set(kwargs) - set(self._ASE_KEYWORDS))
        if unknown:
            raise TypeError(f"Calculator() got unexpected keyword argument(s) {unknown}; fastfeat's are `device`, "
                            f"`skin` and `intra_op_threads`, ASE's {list(self._ASE_KEYWORDS)}")
        if device is not None:
            device = check_device(device)
        if isinstance(model, ForceModel):
            given = {"device": (device, model.device), "skin": (skin, model.skin),
                     "intra_op_threads": (intra_op_threads, model._intra_op_threads)}
            for name, (value, own) in given.items():
                if value is not None and value != own:
                    raise ValueError(f"`{name}`={value!r}, but the ForceModel given was loaded with {own!r}: "
                                     f"set it in ForceModel.load / ForceModel.pretrained, or pass the model's path")
            self.model = model
        else:
            options = {k: v for k, v in (("skin", skin), ("intra_op_threads", intra_op_threads)) if v is not None}
            self.model = resolve_model(model, device=device or "cpu", **options)
        self.model.require_forces()
        super().__init__(**kwargs)

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(f"`{name}` is not available: {DIRECT_FORCES_NOTE}")
        return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        if isinstance(properties, str):  # "forces" for ["forces"], as ASE's own calculate takes it
            properties = [properties]
        if atoms is None and self.atoms is None:
            raise ValueError("no structure to compute: attach the calculator (atoms.calc = calc) and call "
                             "atoms.get_forces(), or pass the atoms (calc.get_forces(atoms))")
        for name in properties:
            if name not in self.implemented_properties:
                raise PropertyNotImplementedError(f"`{name}` is not available: {DIRECT_FORCES_NOTE}")
        super().calculate(atoms, properties, system_changes)
        self.results = {"forces": self.model.forces(self.atoms)}
