"""fastfeat.runtime: run direct-force models (onnxruntime, CPU or CUDA), ASE calculator, fast MD.

Never imports torch.
"""

from ._onnx_meta import ModelInfo, ModelLoadError
from .calculator import Calculator
from ._interrupt import Interrupted
from .md import MDInstabilityError, MDResult, MolecularDynamics, run_md
from .model import ForceEvaluator, ForceModel, pretrained_names
from .relaxation import RelaxInstabilityError, RelaxResult, relax

__all__ = [
    "ForceModel",
    "ForceEvaluator",
    "Calculator",
    "ModelInfo",
    "ModelLoadError",
    "MolecularDynamics",
    "MDResult",
    "MDInstabilityError",
    "Interrupted",
    "run_md",
    "relax",
    "RelaxResult",
    "RelaxInstabilityError",
    "pretrained_names",
]
