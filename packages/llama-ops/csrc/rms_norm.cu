// CUDA kernels of fused_rms_norm (see rms_norm.cc for the math). One block per row; statistics in
// float (double for double). The weight gradient is reduced per column over all rows by a second
// kernel from a per-row-block partial buffer, so no atomics and deterministic results.
#include "cuda_common.cuh"
#include "cuda_launchers.h"

namespace llama_ops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename A>
__global__ void rms_norm_fwd(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                             A* __restrict__ inv_rms, int64_t h, float eps) {
  __shared__ A shared[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * h;
  A ss = 0;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
    const A v = to_acc(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, shared);
  const A inv = acc_rsqrt(ss / static_cast<A>(h) + static_cast<A>(eps));
  if (threadIdx.x == 0) inv_rms[row] = inv;
  T* outr = out + row * h;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x)
    outr[i] = from_acc<T>(to_acc(xr[i]) * inv * to_acc(w[i]));
}

// dx for one row per block; each block also writes this row's g * x * inv into a partial
// buffer slot [block_slot, h], accumulating rows_per_slot rows.
template <typename T, typename A>
__global__ void rms_norm_bwd(const T* __restrict__ x, const T* __restrict__ w,
                             const A* __restrict__ inv_rms, const T* __restrict__ g,
                             T* __restrict__ dx, A* __restrict__ dw_partial, int64_t rows, int64_t h,
                             int64_t rows_per_slot) {
  __shared__ A shared[32];
  const int64_t slot = blockIdx.x;
  const int64_t first = slot * rows_per_slot;
  const int64_t last = min(rows, first + rows_per_slot);
  A* part = dw_partial + slot * h;
  for (int64_t i = threadIdx.x; i < h; i += blockDim.x) part[i] = A(0);
  for (int64_t row = first; row < last; ++row) {
    const T* xr = x + row * h;
    const T* gr = g + row * h;
    const A inv = inv_rms[row];
    A dot = 0;
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x)
      dot += to_acc(gr[i]) * to_acc(w[i]) * to_acc(xr[i]);
    dot = block_sum(dot, shared);
    const A c = dot * inv * inv / static_cast<A>(h);
    T* dxr = dx + row * h;
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) {
      const A xv = to_acc(xr[i]);
      const A gv = to_acc(gr[i]);
      dxr[i] = from_acc<T>(inv * (gv * to_acc(w[i]) - xv * c));
      part[i] += gv * (xv * inv);  // each thread owns its columns: no race
    }
  }
}

template <typename T, typename A>
__global__ void reduce_columns(const A* __restrict__ partial, T* __restrict__ dw, int64_t slots,
                               int64_t h) {
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= h) return;
  A s = 0;
  for (int64_t k = 0; k < slots; ++k) s += partial[k * h + col];
  dw[col] = from_acc<T>(s);
}

template <typename PT>
void forward(const paddle::Tensor& x, const paddle::Tensor& w, float eps, paddle::Tensor& out,
             paddle::Tensor& inv_rms) {
  using T = typename Native<PT>::type;
  using A = typename AccT<PT>::type;
  const int64_t h = w.numel();
  if (h == 0 || x.numel() == 0) return;  // a grid of zero blocks is a launch error
  const int64_t rows = x.numel() / h;
  rms_norm_fwd<T, A><<<rows, kThreads, 0, x.stream()>>>(
      reinterpret_cast<const T*>(x.data<PT>()), reinterpret_cast<const T*>(w.data<PT>()),
      reinterpret_cast<T*>(out.data<PT>()), inv_rms.data<A>(), h, eps);
}

template <typename PT>
void backward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& inv_rms,
              const paddle::Tensor& g, paddle::Tensor& dx, paddle::Tensor& dw) {
  using T = typename Native<PT>::type;
  using A = typename AccT<PT>::type;
  const int64_t h = w.numel();
  if (h == 0) return;
  const int64_t rows = x.numel() / h;
  if (rows == 0) {  // no rows: the weight gradient is an empty sum, and slots would be 0 below
    cudaMemsetAsync(dw.data<PT>(), 0, h * sizeof(T), x.stream());
    return;
  }
  // Enough blocks to fill the device, few enough that the column reduction stays small.
  const int64_t slots = rows < 1024 ? rows : 1024;
  const int64_t rows_per_slot = (rows + slots - 1) / slots;
  const int64_t used = (rows + rows_per_slot - 1) / rows_per_slot;
  auto partial = paddle::empty({used, h}, acc_dtype_of<PT>(), x.place());
  rms_norm_bwd<T, A><<<used, kThreads, 0, x.stream()>>>(
      reinterpret_cast<const T*>(x.data<PT>()), reinterpret_cast<const T*>(w.data<PT>()),
      inv_rms.data<A>(), reinterpret_cast<const T*>(g.data<PT>()),
      reinterpret_cast<T*>(dx.data<PT>()), partial.data<A>(), rows, h, rows_per_slot);
  reduce_columns<T, A><<<(h + kThreads - 1) / kThreads, kThreads, 0, x.stream()>>>(
      partial.data<A>(), reinterpret_cast<T*>(dw.data<PT>()), used, h);
}

}  // namespace

void rms_norm_forward(const paddle::Tensor& x, const paddle::Tensor& weight, float eps,
                      paddle::Tensor& out, paddle::Tensor& inv_rms) {
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_rms_norm (cuda)", ([&] {
    forward<data_t>(x, weight, eps, out, inv_rms);
  }));
}

void rms_norm_backward(const paddle::Tensor& x, const paddle::Tensor& weight,
                       const paddle::Tensor& inv_rms, const paddle::Tensor& grad_out,
                       paddle::Tensor& grad_x, paddle::Tensor& grad_weight) {
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_rms_norm_grad (cuda)", ([&] {
    backward<data_t>(x, weight, inv_rms, grad_out, grad_x, grad_weight);
  }));
}

}  // namespace cuda
}  // namespace llama_ops
