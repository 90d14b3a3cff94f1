#!/usr/bin/env bash
# Run ON the GPU machine, from the repository root, before run_all.sh (the image has no network):
#   - installs the carried wheels in .gpuwheels/ (ase; from benchmarks/gpu/prepare.sh) without dependencies;
#   - if the onnxruntime-gpu parts were copied to /tmp/ortgpu (part-* and NAME, one carried part per call),
#     joins them and installs the wheel into /tmp/ortgpu/site, which run_all.sh puts first on PYTHONPATH
#     (the image's CPU onnxruntime stays; with both in one site-packages the CUDA provider often vanishes);
#   - installs fastfeat itself editable, offline (--no-deps --no-build-isolation: setuptools is in the image);
#   - prints the versions and what is usable, so a broken image shows in seconds, not after a timeout.
set -uo pipefail
py=${PYTHON:-python3}
if compgen -G ".gpuwheels/*.whl" > /dev/null; then
    $py -m pip install -q --no-deps .gpuwheels/*.whl || echo "setup: installing .gpuwheels failed"
fi
if [ -f /tmp/ortgpu/NAME ] && compgen -G "/tmp/ortgpu/part-*" > /dev/null && [ ! -d /tmp/ortgpu/site ]; then
    name=$(cat /tmp/ortgpu/NAME)
    cat /tmp/ortgpu/part-* > "/tmp/ortgpu/$name"
    $py -m pip install -q --no-deps --target /tmp/ortgpu/site "/tmp/ortgpu/$name" || echo "setup: onnxruntime-gpu install failed"
fi
$py -m pip install -q --no-deps --no-build-isolation -e . || echo "setup: installing fastfeat failed"
PYTHONPATH=/tmp/ortgpu/site${PYTHONPATH:+:$PYTHONPATH} $py - <<'PY'
import importlib
for name in ("numpy", "numba", "numba_cuda", "cupy", "onnx", "onnxruntime", "ase", "pytest", "fastfeat"):
    try:
        m = importlib.import_module(name)
        print(f"{name:12s} {getattr(m, '__version__', '?')}  {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"{name:12s} MISSING ({type(exc).__name__}: {exc})")
try:
    from numba import cuda
    print("numba.cuda available:", cuda.is_available(), cuda.get_current_device().name if cuda.is_available() else "")
except Exception as exc:
    print("numba.cuda: FAILED", exc)
try:
    import onnxruntime as ort
    print("onnxruntime providers:", ort.get_available_providers())
except Exception as exc:
    print("onnxruntime: FAILED", exc)
PY
