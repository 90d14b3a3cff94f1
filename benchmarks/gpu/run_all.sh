#!/usr/bin/env bash
# All GPU checks and benchmarks in one go, on a machine with a CUDA GPU, from the repository root.
# Needs fastfeat with the [gpu] extra plus pytest (tests) and onnx (runtime_md builds a test model):
#   pip install -e ".[gpu]" pytest onnx
# onnxruntime and onnxruntime-gpu must not both be installed: with both, onnxruntime often offers no
# CUDAExecutionProvider; runtime_md.py prints the providers it sees first.
# Writes logs and JSON to ${1:-benchmarks/results/gpu}. Every step runs even if an earlier one fails;
# the exit status is non-zero if any failed.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
status=0
FASTFEAT_TEST_REAL_GPU=1 python3 -m pytest -q tests/core/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || status=1
python3 benchmarks/gpu/bench_features.py --atoms 1000000 --out "$out/gpu_features.json" 2>&1 \
    | tee "$out/bench_features.log" || status=1
python3 benchmarks/gpu/runtime_md.py 2>&1 | tee "$out/runtime_md.log" || status=1
exit $status
