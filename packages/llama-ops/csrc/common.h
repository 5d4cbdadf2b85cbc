// Shared helpers of the llama-ops kernels: dtype handling, the OpenMP row loop and the per-ISA clones.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llama_ops {

// Kernels are compiled once per x86-64 level and the loader picks the best one the CPU has, so a
// single wheel runs everywhere yet uses AVX2+FMA / AVX-512 where present.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define LLAMA_OPS_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLAMA_OPS_CPU_CLONES
#endif

// Statistics and intermediate math run in float for float/float16/bfloat16 and in double for double.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
inline typename Acc<T>::type load(T v) {
  return static_cast<typename Acc<T>::type>(v);
}

template <typename T, typename A>
inline T store(A v) {
  return static_cast<T>(v);
}

inline paddle::DataType acc_dtype(paddle::DataType t) {
  return t == paddle::DataType::FLOAT64 ? paddle::DataType::FLOAT64 : paddle::DataType::FLOAT32;
}

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 15;

// Calls fn(row) for every row, split statically over the OpenMP threads (as many as the runtime
// allows: OMP_NUM_THREADS / omp_set_num_threads).
template <typename Fn>
inline void for_each_row(int64_t rows, int64_t row_elems, Fn fn) {
#ifdef _OPENMP
  const bool parallel = rows > 1 && rows * row_elems >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) fn(r);
#else
  for (int64_t r = 0; r < rows; ++r) fn(r);
#endif
}

// Custom ops receive whatever strides the caller's tensor has; kernels index densely.
inline paddle::Tensor dense(const paddle::Tensor& t) {
  return t.is_contiguous() ? t : t.contiguous();
}

inline void check_same_dtype(const paddle::Tensor& a, const paddle::Tensor& b, const char* what) {
  PD_CHECK(a.dtype() == b.dtype(), what, ": dtypes differ (", a.dtype(), " vs ", b.dtype(), ")");
}

// exp(x) for float in a form the compiler vectorises (glibc's expf does not vectorise without
// -ffast-math): Cephes' polynomial on [-ln2/2, ln2/2] times 2^n, relative error about 2 ulp. Needs
// -fno-trapping-math so the clamps become vector min/max instead of branches.
inline float vexp(float x) {
  x = x > -87.3f ? x : -87.3f;
  x = x < 88.3f ? x : 88.3f;
  // n = round(x / ln2) by the 1.5 * 2^23 trick, which leaves n in the low mantissa bits of t.
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n as a float's exponent field
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline double vexp(double x) { return std::exp(x); }

}  // namespace llama_ops
