// CUDA kernel of fused_rope (see rope.cc for the math). One thread per (row, head, i < d/2) pair
// rotates elements i and i + d/2; sign -1 applies the transpose (backward).
#include "cuda_common.cuh"
#include "cuda_launchers.h"

namespace llama_ops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename A>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cos,
                            const T* __restrict__ sin, T* __restrict__ out, int64_t pairs,
                            int64_t heads, int64_t d, int64_t seq, bool per_batch, int sign) {
  const int64_t half = d / 2;
  const A s = static_cast<A>(sign);
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p % half;
    const int64_t head_row = p / half;  // (batch * seq + pos) * heads + head
    const int64_t row = head_row / heads;
    const int64_t table = (per_batch ? row : row % seq) * d;
    const int64_t base = head_row * d;
    const A x1 = to_acc(x[base + i]);
    const A x2 = to_acc(x[base + i + half]);
    const A s_lo = to_acc(sin[table + (sign > 0 ? i : i + half)]);
    const A s_hi = to_acc(sin[table + (sign > 0 ? i + half : i)]);
    out[base + i] = from_acc<T>(x1 * to_acc(cos[table + i]) - s * x2 * s_lo);
    out[base + i + half] = from_acc<T>(x2 * to_acc(cos[table + i + half]) + s * x1 * s_hi);
  }
}

template <typename PT>
void run(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
         int64_t seq, bool per_batch, int sign, paddle::Tensor& out) {
  using T = typename Native<PT>::type;
  using A = typename AccT<PT>::type;
  const int64_t heads = x.shape()[2];
  const int64_t d = x.shape()[3];
  const int64_t pairs = x.numel() / 2;
  rope_kernel<T, A><<<blocks_for(pairs, kThreads), kThreads, 0, x.stream()>>>(
      reinterpret_cast<const T*>(x.data<PT>()), reinterpret_cast<const T*>(cos.data<PT>()),
      reinterpret_cast<const T*>(sin.data<PT>()), reinterpret_cast<T*>(out.data<PT>()), pairs,
      heads, d, seq, per_batch, sign);
}

}  // namespace

void rope_apply(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
                int64_t seq, bool per_batch, int sign, paddle::Tensor& out) {
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_rope (cuda)", ([&] {
    run<data_t>(x, cos, sin, seq, per_batch, sign, out);
  }));
}

}  // namespace cuda
}  // namespace llama_ops
