#!/usr/bin/env bash
# What a lent GPU machine runs (one prepared script, see issue 14): the gpu-marked tests, then the CUDA
# benchmark, results under ${OUT:-gpu_results}. Needs the project installed with the cuda extra:
#   pip install -e ".[test,cuda]"
set -uo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python -m pytest tests/test_cuda.py -q -m gpu -rs 2>&1 | tee "$out/gpu_tests.txt"
python scripts/bench_cuda.py --arch "${CUDA_ARCH:-sm_90}" --rounds "${ROUNDS:-5}" --json "$out/bench_cuda.json" \
    2>&1 | tee "$out/bench_cuda.txt"
