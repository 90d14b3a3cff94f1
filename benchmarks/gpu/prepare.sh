#!/usr/bin/env bash
# Run HERE (the development machine, with network or a pip cache) before a GPU session: puts the pure-Python
# wheels the GPU image lacks into .gpuwheels/ (git-ignored; carry it: `run(carry=[".gpuwheels"], ...)`).
# The GPU image (see benchmarks/gpu/README.md) has numba, numba-cuda, cupy, onnx, pytest and the CPU build
# of onnxruntime, but not ase. The onnxruntime-gpu wheel (~255 MB) is over one call's carry limit: split it
# with the workplace tool (../shared/tools/ort-gpu-chunks.sh -> .ortgpu/part-*) and carry one part per call.
set -euo pipefail
dir=.gpuwheels
rm -rf "$dir" && mkdir -p "$dir"
version=$(python3 -c "import ase; print(ase.__version__)" 2>/dev/null || echo "")
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir" "ase${version:+==$version}"
ls -la "$dir"
