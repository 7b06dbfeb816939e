#!/usr/bin/env bash
# What a lent GPU machine runs (one prepared script, see issue 14), within about 8 minutes: the gpu-marked
# tests (every family bit-exact against the reference, int8's __dp4a kernels with and without activation sums,
# the default model, every method, the --float16 model), then the CUDA benchmark (GEMV 4096^2 of every family
# incl. int8 vs PyTorch fp16 cuBLAS; digits and ResNet-18 W2A2/W4A4, batch 1 and 16, also --float16, vs PyTorch
# fp16 cuDNN). Results under ${OUT:-gpu_results}; each phase has its own time limit and the benchmark writes
# every row as soon as it has it, so a phase cut short still leaves what it measured.
#
# Needs tvmquant importable with the cuda extra (pip install -e ".[test,cuda]"): apache-tvm 0.27 and the pip
# CUDA 13 compiler. A lent machine has no network; the apache-tvm wheel is ~100 MB (libtvm_compiler.so 88 MiB
# compressed), more than one device call carries (64 MiB): bring TVM there first, or the preflight says so.
set -uo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
if ! python -c "import tvm, tvmquant; assert tvm.cuda().exist, 'TVM sees no CUDA device'" 2> "$out/preflight.txt"; then
    echo "gpu_check: cannot run: $(tail -n 1 "$out/preflight.txt")" | tee -a "$out/preflight.txt"
    exit 2
fi
timeout "${TESTS_S:-270}" python -m pytest tests/test_cuda.py -q -m gpu -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.txt"
timeout "${BENCH_S:-210}" python scripts/bench_cuda.py --arch "${CUDA_ARCH:-sm_90}" --rounds "${ROUNDS:-5}" --float16 \
    --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.txt"
