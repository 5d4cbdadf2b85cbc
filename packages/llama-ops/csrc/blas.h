// Row-major float GEMM for the CPU inference kernels: C[m, n] = A[m, k] B (B [k, n], or [n, k] read
// transposed). It calls the cblas_sgemm of the MKL that Paddle's x86 wheels ship and load
// (libmklml_intel.so), found at run time: a decode step's products are small, and going through
// paddle::experimental::matmul adds its dispatch, shape inference and an allocation to each (about
// 3 us, and at [1, 256] x [256, 8192] 30-70% over MKL's own time, measured with config T). Where no
// such library is loaded (another BLAS, another platform), or with LLAMA_OPS_BLAS=paddle, it falls
// back to that matmul.
#pragma once

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace llama_ops {

using SgemmFn = void (*)(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc);

inline SgemmFn lookup_sgemm() {
  // LLAMA_OPS_BLAS=paddle: always Paddle's matmul (to compare the two, or to rule MKL out).
  if (const char* choice = std::getenv("LLAMA_OPS_BLAS"); choice && std::strcmp(choice, "paddle") == 0)
    return nullptr;
  for (const char* name : {"libmklml_intel.so", "libmkl_rt.so"}) {
    // Only a library the process holds already: RTLD_NOLOAD never loads a second BLAS.
    if (void* lib = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
      if (void* sym = dlsym(lib, "cblas_sgemm")) return reinterpret_cast<SgemmFn>(sym);
    }
  }
  return nullptr;
}

struct SgemmLookup {
  std::atomic<SgemmFn> found{nullptr};
  std::atomic<int> lookups{0};
};

inline SgemmLookup& sgemm_lookup() {
  static SgemmLookup state;
  return state;
}

// Paddle loads its MKL at its first BLAS call, which may be the fallback's in this library: the
// lookup is tried again once after that, then its answer kept.
inline SgemmFn find_sgemm() {
  SgemmLookup& state = sgemm_lookup();
  SgemmFn fn = state.found.load(std::memory_order_acquire);
  if (fn != nullptr || state.lookups.load(std::memory_order_relaxed) >= 2) return fn;
  state.lookups.fetch_add(1, std::memory_order_relaxed);
  fn = lookup_sgemm();
  state.found.store(fn, std::memory_order_release);
  return fn;
}

// C = A B or A Bᵀ, all dense row-major.
inline void sgemm(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n,
                  bool b_transposed) {
  if (const SgemmFn fn = find_sgemm()) {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
    fn(kRowMajor, kNoTrans, b_transposed ? kTrans : kNoTrans, static_cast<int>(m),
       static_cast<int>(n), static_cast<int>(k), 1.f, a, static_cast<int>(k), b,
       static_cast<int>(b_transposed ? k : n), 0.f, c, static_cast<int>(n));
    return;
  }
  const auto f32 = paddle::DataType::FLOAT32;
  auto at = paddle::from_blob(const_cast<float*>(a), {m, k}, f32);
  auto bt = paddle::from_blob(const_cast<float*>(b), b_transposed ? std::vector<int64_t>{n, k}
                                                                  : std::vector<int64_t>{k, n},
                              f32);
  auto ct = paddle::experimental::matmul(at, bt, false, b_transposed);
  std::memcpy(c, ct.data<float>(), sizeof(float) * m * n);
}

}  // namespace llama_ops
