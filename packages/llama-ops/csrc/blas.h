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
#include <vector>

#include "common.h"

namespace llama_ops {

using SgemmFn = void (*)(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc);

inline SgemmFn lookup_sgemm() {
  // LLAMA_OPS_BLAS=paddle: always Paddle's matmul (to compare the two, or to rule MKL out).
  if (const char* choice = std::getenv("LLAMA_OPS_BLAS"); choice && std::strcmp(choice, "paddle") == 0)
    return nullptr;
  // Only the library the process holds already (RTLD_NOLOAD never loads a second BLAS), and only
  // MKL's LP64 build, whose ints are the 32-bit ones declared above (libmkl_rt may be ILP64).
  if (void* lib = dlopen("libmklml_intel.so", RTLD_NOW | RTLD_NOLOAD)) {
    if (void* sym = dlsym(lib, "cblas_sgemm")) return reinterpret_cast<SgemmFn>(sym);
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
  if (fn != nullptr) state.found.store(fn, std::memory_order_release);  // never unset a find
  return fn;
}

// C = A B or A Bᵀ, row-major with leading dimensions (A [m, k] rows lda apart; B [k, n], or [n, k]
// transposed, rows ldb apart; C [m, n] rows ldc apart).
inline void sgemm(const float* a, int64_t lda, const float* b, int64_t ldb, bool b_transposed,
                  float* c, int64_t ldc, int64_t m, int64_t k, int64_t n) {
  if (const SgemmFn fn = find_sgemm()) {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
    fn(kRowMajor, kNoTrans, b_transposed ? kTrans : kNoTrans, static_cast<int>(m),
       static_cast<int>(n), static_cast<int>(k), 1.f, a, static_cast<int>(lda), b,
       static_cast<int>(ldb), 0.f, c, static_cast<int>(ldc));
    return;
  }
  // Paddle's matmul takes dense tensors: rows are gathered into dense copies where they are apart.
  const int64_t b_rows = b_transposed ? n : k, b_cols = b_transposed ? k : n;
  std::vector<float> a_dense, b_dense;
  if (lda != k) {
    a_dense.resize(m * k);
    for (int64_t r = 0; r < m; ++r) std::memcpy(&a_dense[r * k], a + r * lda, sizeof(float) * k);
    a = a_dense.data();
  }
  if (ldb != b_cols) {
    b_dense.resize(b_rows * b_cols);
    for (int64_t r = 0; r < b_rows; ++r)
      std::memcpy(&b_dense[r * b_cols], b + r * ldb, sizeof(float) * b_cols);
    b = b_dense.data();
  }
  const auto f32 = paddle::DataType::FLOAT32;
  auto at = paddle::from_blob(const_cast<float*>(a), {m, k}, f32);
  auto bt = paddle::from_blob(const_cast<float*>(b), {b_rows, b_cols}, f32);
  auto ct = paddle::experimental::matmul(at, bt, false, b_transposed);
  for (int64_t r = 0; r < m; ++r)
    std::memcpy(c + r * ldc, ct.data<float>() + r * n, sizeof(float) * n);
}

// Dense operands.
inline void sgemm(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n,
                  bool b_transposed) {
  sgemm(a, k, b, b_transposed ? k : n, b_transposed, c, n, m, k, n);
}

}  // namespace llama_ops
