// Row kernels shared by the operators: one row of RMSNorm, of the rotary embedding, of SwiGLU.
#pragma once

#include "common.h"

namespace llama_ops {

template <typename T>
LLAMA_OPS_CPU_CLONES void rms_norm_row(const T* __restrict x, const T* __restrict w, T* __restrict out,
                                       typename Acc<T>::type* __restrict inv_rms, int64_t h,
                                       float eps) {
  using A = typename Acc<T>::type;
  A ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < h; ++i) {
    const A v = load(x[i]);
    ss += v * v;
  }
  const A inv = A(1) / std::sqrt(ss / static_cast<A>(h) + static_cast<A>(eps));
  *inv_rms = inv;
#pragma omp simd
  for (int64_t i = 0; i < h; ++i) out[i] = store<T>(load(x[i]) * inv * load(w[i]));
}

// All heads of one (batch, position) row: x and out point at [heads, d].
template <typename T>
LLAMA_OPS_CPU_CLONES void rope_row(const T* __restrict x, const T* __restrict cos,
                                   const T* sin, T* __restrict out, int64_t heads,
                                   int64_t d, int sign) {
  using A = typename Acc<T>::type;
  const int64_t half = d / 2;
  const A s = static_cast<A>(sign);
  // The forward (sign=+1) weights each element by sin at its own index; the transpose by sin at
  // its partner's index.
  const T* sin_lo = sign > 0 ? sin : sin + half;
  const T* sin_hi = sign > 0 ? sin + half : sin;
  for (int64_t h = 0; h < heads; ++h) {
    const T* xh = x + h * d;
    T* oh = out + h * d;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const A x1 = load(xh[i]);
      const A x2 = load(xh[i + half]);
      oh[i] = store<T>(x1 * load(cos[i]) - s * x2 * load(sin_lo[i]));
      oh[i + half] = store<T>(x2 * load(cos[i + half]) + s * x1 * load(sin_hi[i]));
    }
  }
}

template <typename A>
inline A sigmoid(A x) {
  return A(1) / (A(1) + vexp(-x));
}

template <typename T>
LLAMA_OPS_CPU_CLONES void swiglu_row(const T* __restrict gate, const T* __restrict up,
                                     T* __restrict out, int64_t n) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A g = load(gate[i]);
    out[i] = store<T>(g * sigmoid(g) * load(up[i]));
  }
}

}  // namespace llama_ops
