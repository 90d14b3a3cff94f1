#!/usr/bin/env bash
# All GPU benchmarks in one go, on a machine with a CUDA GPU, from the repository root, after
# `pip install -e ".[gpu]"`. Writes JSON/log files to ${1:-benchmarks/results/gpu}.
set -euo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
FASTFEAT_TEST_REAL_GPU=1 python3 -m pytest -q tests/core/test_cuda.py | tee "$out/test_cuda.log"
python3 benchmarks/gpu/bench_features.py --atoms 1000000 --out "$out/gpu_features.json" | tee "$out/bench_features.log"
python3 benchmarks/gpu/runtime_md.py | tee "$out/runtime_md.log"
