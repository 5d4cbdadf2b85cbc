// Row-major float GEMM for the CPU inference kernels: C[m, n] = A[m, k] B (B [k, n], or [n, k] read
// transposed). It calls the cblas_sgemm of the MKL that Paddle's x86 wheels ship and load
// (libmklml_intel.so), found at run time once Paddle has loaded it (resolve_sgemm, below): a decode
// step's products are small, and going through paddle::experimental::matmul adds its dispatch,
// shape inference and an allocation to each (about 3 us, and at [1, 256] x [256, 8192] 30-70% over
// MKL's own time, measured with config T). Where no such library is loaded (another BLAS, another
// platform), with LLAMA_OPS_BLAS=paddle, or for sizes beyond cblas' 32-bit ints, it uses that
// matmul.
#pragma once

#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.h"

namespace llama_ops {

using SgemmFn = void (*)(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc);

// MKL's cblas_sgemm if the process holds it: only the library already loaded (RTLD_NOLOAD never
// loads a second BLAS), and only MKL's LP64 build, whose ints are the 32-bit ones declared above
// (libmkl_rt may be ILP64).
inline SgemmFn loaded_mkl_sgemm() {
  if (void* lib = dlopen("libmklml_intel.so", RTLD_NOW | RTLD_NOLOAD)) {
    if (void* sym = dlsym(lib, "cblas_sgemm")) return reinterpret_cast<SgemmFn>(sym);
  }
  return nullptr;
}

// Paddle's matmul, row-major, on dense operands: C [m, n] = A [m, k] B (B [k, n], or [n, k]
// transposed), written to c with rows ldc apart.
inline void paddle_sgemm(const float* a, const float* b, bool b_transposed, float* c, int64_t ldc,
                         int64_t m, int64_t k, int64_t n) {
  const auto f32 = paddle::DataType::FLOAT32;
  auto at = paddle::from_blob(const_cast<float*>(a), {m, k}, f32);
  auto bt = paddle::from_blob(const_cast<float*>(b), {b_transposed ? n : k, b_transposed ? k : n},
                              f32);
  auto ct = paddle::experimental::matmul(at, bt, false, b_transposed);
  for (int64_t r = 0; r < m; ++r)
    std::memcpy(c + r * ldc, ct.data<float>() + r * n, sizeof(float) * n);
}

// Resolved once per process, at the kernels' first GEMM (or gemm_backend()). Paddle's x86 wheels
// load their MKL at Paddle's first BLAS call, not at import, so a lookup made before it finds
// nothing: when MKL is not loaded yet, one 2x2 product through Paddle's matmul makes Paddle load it
// (where its build uses MKL), and the lookup after that is final. Nothing is tried again later.
// LLAMA_OPS_BLAS=paddle: always Paddle's matmul (to compare the two, or to rule MKL out).
inline SgemmFn resolve_sgemm() {
  if (const char* choice = std::getenv("LLAMA_OPS_BLAS"); choice && std::strcmp(choice, "paddle") == 0)
    return nullptr;
  if (SgemmFn fn = loaded_mkl_sgemm()) return fn;
  const float a[4] = {1.f, 0.f, 0.f, 1.f};
  float c[4];
  paddle_sgemm(a, a, false, c, 2, 2, 2, 2);
  return loaded_mkl_sgemm();
}

inline SgemmFn find_sgemm() {
  static const SgemmFn fn = resolve_sgemm();  // initialised once, thread-safe (C++11)
  return fn;
}

// C = A B or A Bᵀ, row-major with leading dimensions (A [m, k] rows lda apart; B [k, n], or [n, k]
// transposed, rows ldb apart; C [m, n] rows ldc apart).
inline void sgemm(const float* a, int64_t lda, const float* b, int64_t ldb, bool b_transposed,
                  float* c, int64_t ldc, int64_t m, int64_t k, int64_t n) {
  // cblas takes 32-bit ints (LP64): a size beyond them goes to Paddle's matmul, which takes int64.
  const bool fits = m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX &&
                    ldb <= INT_MAX && ldc <= INT_MAX;
  if (const SgemmFn fn = fits ? find_sgemm() : nullptr) {
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
  paddle_sgemm(a, b, b_transposed, c, ldc, m, k, n);
}

// Dense operands.
inline void sgemm(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n,
                  bool b_transposed) {
  sgemm(a, k, b, b_transposed ? k : n, b_transposed, c, n, m, k, n);
}

}  // namespace llama_ops
