#!/usr/bin/env bash
# Builds tests/cuda/check_kernels.cu against the Paddle stand-in header and runs it on a CUDA machine
# (no Paddle needed there): accuracy of every CUDA kernel in four dtypes, timings, then the
# accuracy checks again under compute-sanitizer's memcheck and racecheck when it is installed.
# Results go to $OUT (or ./cuda-check): cuda_check.txt / .jsonl, sanitizer_*.txt, device.txt.
#   bash packages/llama-ops/tests/cuda/run_on_gpu.sh          # CUDA_ARCH=sm_80 for an A100
set -uo pipefail
cd "$(dirname "$0")/../.."  # packages/llama-ops
out="${OUT:-$PWD/cuda-check}"
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1; } | tee "$out/device.txt"
nvcc -O3 -std=c++17 -arch="${CUDA_ARCH:-sm_90}" -lineinfo -I tests/cuda/shim -I csrc \
  csrc/rms_norm.cu csrc/rope.cu csrc/swiglu.cu tests/cuda/check_kernels.cu -o /tmp/check_kernels || exit 2
/tmp/check_kernels "$out/cuda_check.jsonl" | tee "$out/cuda_check.txt"
status=${PIPESTATUS[0]}
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 3 /tmp/check_kernels \
      "/tmp/sanitizer_$tool.jsonl" accuracy-only >"$out/sanitizer_$tool.txt" 2>&1
    code=$?
    echo "compute-sanitizer $tool: exit $code ($(tail -1 "$out/sanitizer_$tool.txt"))"
    [ "$code" -eq 0 ] || status=3
  done
fi
exit "$status"
