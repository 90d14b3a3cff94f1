#!/usr/bin/env bash
# All GPU checks and benchmarks in one go, on a machine with a CUDA GPU, from the repository root.
# On the workplace's GPU machine (no network): first `bash benchmarks/gpu/setup.sh` (see
# benchmarks/gpu/README.md: carried wheels, onnxruntime-gpu parts, an offline editable install); then
#   bash benchmarks/gpu/run_all.sh "$OUT"
# so that the logs come back. Elsewhere: pip install -e ".[gpu]" pytest onnx ase.
# onnxruntime and onnxruntime-gpu must not both be importable from one site-packages: setup.sh installs
# the GPU build into /tmp/ortgpu/site, put first on PYTHONPATH here. Without a CUDA provider the
# onnxruntime steps report it and the feature checks (Numba CUDA, CuPy) still run.
# Writes logs and JSON to ${1:-${OUT:-benchmarks/results/gpu}}. Every step runs even if an earlier one
# fails; the exit status is non-zero if any failed.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results/gpu}}
if [ -d /tmp/ortgpu/site ]; then export PYTHONPATH=/tmp/ortgpu/site${PYTHONPATH:+:$PYTHONPATH}; fi
mkdir -p "$out"
status=0
FASTFEAT_TEST_REAL_GPU=1 python3 -m pytest -q tests/core/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || status=1
python3 benchmarks/gpu/bench_features.py --atoms 1000000 --out "$out/gpu_features.json" 2>&1 \
    | tee "$out/bench_features.log" || status=1
python3 benchmarks/gpu/sparse_boxes.py --out "$out/sparse_boxes.json" 2>&1 | tee "$out/sparse_boxes.log" || status=1
python3 benchmarks/gpu/runtime_md.py 2>&1 | tee "$out/runtime_md.log" || status=1
python3 -m pytest -q -rs tests/runtime/test_cuda.py 2>&1 | tee "$out/test_runtime_cuda.log" || status=1
exit $status
