"""ASE calculator for a fastfeat direct-force model."""

from __future__ import annotations

from ase.calculators.calculator import Calculator as _ASECalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes

from .model import resolve_model

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
    device : {"cpu", "cuda"}
        Used only when ``model`` is a path or a name.

    Raises
    ------
    ValueError
        The model does not predict forces (its ``fastfeat.target`` is e.g. "dipole").

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

    def __init__(self, model, device="cpu", **kwargs):
        super().__init__(**kwargs)
        self.model = resolve_model(model, device=device)
        self.model.require_forces()

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(f"`{name}` is not available: {DIRECT_FORCES_NOTE}")
        return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        for name in properties:
            if name not in self.implemented_properties:
                raise PropertyNotImplementedError(f"`{name}` is not available: {DIRECT_FORCES_NOTE}")
        super().calculate(atoms, properties, system_changes)
        self.results = {"forces": self.model.forces(self.atoms)}
