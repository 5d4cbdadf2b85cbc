// fused_rms_norm: out = x * rsqrt(mean(x^2) + eps) * weight over the last axis, statistics in fp32
// (fp64 for double inputs). The forward also returns inv_rms per row so the backward never
// recomputes the reduction.
#include "rows.h"
#ifdef PADDLE_WITH_CUDA
#include "cuda_launchers.h"
#endif

namespace llama_ops {
namespace {

// One row of the backward. With n = x * inv (the normalised row) and gw = g * w:
//   dx = inv * (gw - n * mean(gw * n)),   dweight += g * n
template <typename T>
LLAMA_OPS_CPU_CLONES void rms_norm_grad_row(const T* __restrict x, const T* __restrict w,
                                            const T* __restrict g, typename Acc<T>::type inv,
                                            T* __restrict dx, typename Acc<T>::type* __restrict dw,
                                            int64_t h) {
  using A = typename Acc<T>::type;
  A dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < h; ++i) dot += load(g[i]) * load(w[i]) * load(x[i]);
  const A c = dot * inv * inv / static_cast<A>(h);
#pragma omp simd
  for (int64_t i = 0; i < h; ++i) {
    const A xv = load(x[i]);
    const A gv = load(g[i]);
    dx[i] = store<T>(inv * (gv * load(w[i]) - xv * c));
    dw[i] += gv * (xv * inv);
  }
}

template <typename T>
void rms_norm_forward_cpu(const paddle::Tensor& x, const paddle::Tensor& w, float eps,
                          paddle::Tensor& out, paddle::Tensor& inv_rms) {
  using A = typename Acc<T>::type;
  const int64_t h = w.numel();
  const int64_t rows = x.numel() / h;
  const T* xp = x.data<T>();
  const T* wp = w.data<T>();
  T* op = out.data<T>();
  A* ip = inv_rms.data<A>();
  for_each_row(rows, h, [&](int64_t r) { rms_norm_row<T>(xp + r * h, wp, op + r * h, ip + r, h, eps); });
}

template <typename T>
void rms_norm_backward_cpu(const paddle::Tensor& x, const paddle::Tensor& w,
                           const paddle::Tensor& inv_rms, const paddle::Tensor& g,
                           paddle::Tensor& dx, paddle::Tensor& dw) {
  using A = typename Acc<T>::type;
  const int64_t h = w.numel();
  if (h == 0) return;
  const int64_t rows = x.numel() / h;  // may be 0: dw is then the empty sum, zeros
  const T* xp = x.data<T>();
  const T* wp = w.data<T>();
  const T* gp = g.data<T>();
  const A* ip = inv_rms.data<A>();
  T* dxp = dx.data<T>();
  // The weight gradient sums over rows: each thread accumulates its rows into its own slice, then
  // the slices are added. One h-sized slice per thread is the only scratch memory.
  const bool parallel = rows > 1 && rows * h >= kParallelGrain;
  const int nt = parallel ? max_threads() : 1;
  std::vector<A> partial(static_cast<size_t>(nt) * h, A(0));
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (parallel)
#endif
  {
    A* mine = partial.data() + static_cast<int64_t>(thread_id()) * h;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t r = 0; r < rows; ++r)
      rms_norm_grad_row<T>(xp + r * h, wp, gp + r * h, ip[r], dxp + r * h, mine, h);
  }
  T* dwp = dw.data<T>();
  for (int64_t i = 0; i < h; ++i) {
    A s = 0;
    for (int t = 0; t < nt; ++t) s += partial[static_cast<int64_t>(t) * h + i];
    dwp[i] = store<T>(s);
  }
}

void check_inputs(const paddle::Tensor& x, const paddle::Tensor& w) {
  PD_CHECK(w.shape().size() == 1, "fused_rms_norm: weight must be 1-D, got rank ", w.shape().size());
  PD_CHECK(!x.shape().empty() && x.shape().back() == w.shape()[0],
           "fused_rms_norm: last axis of x must equal weight's length ", w.shape()[0]);
  check_same_dtype(x, w, "fused_rms_norm x/weight");
  PD_CHECK(x.place() == w.place(), "fused_rms_norm: x and weight are on different devices");
}

std::vector<int64_t> row_shape(const std::vector<int64_t>& x_shape) {
  return std::vector<int64_t>(x_shape.begin(), x_shape.end() - 1);
}

}  // namespace

std::vector<paddle::Tensor> RmsNormForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                           float eps) {
  check_inputs(x_in, w_in);
  const paddle::Tensor x = dense(x_in);
  const paddle::Tensor w = dense(w_in);
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  auto inv_rms = paddle::empty(row_shape(x.shape()), acc_dtype(x.dtype()), x.place());
  if (x.numel() == 0) return {out, inv_rms};
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) {
    cuda::rms_norm_forward(x, w, eps, out, inv_rms);
    return {out, inv_rms};
  }
#endif
  PD_CHECK(x.is_cpu(), "fused_rms_norm: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_rms_norm", ([&] {
    rms_norm_forward_cpu<data_t>(x, w, eps, out, inv_rms);
  }));
  return {out, inv_rms};
}

std::vector<paddle::Tensor> RmsNormBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                            const paddle::Tensor& inv_rms,
                                            const paddle::Tensor& g_in, float eps) {
  const paddle::Tensor x = dense(x_in);
  const paddle::Tensor w = dense(w_in);
  const paddle::Tensor g = dense(g_in);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(w.shape(), w.dtype(), w.place());
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) {
    cuda::rms_norm_backward(x, w, inv_rms, g, dx, dw);
    return {dx, dw};
  }
#endif
  PD_CHECK(x.is_cpu(), "fused_rms_norm_grad: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_rms_norm_grad", ([&] {
    rms_norm_backward_cpu<data_t>(x, w, inv_rms, g, dx, dw);
  }));
  return {dx, dw};
}

std::vector<std::vector<int64_t>> RmsNormInferShape(const std::vector<int64_t>& x_shape,
                                                    const std::vector<int64_t>& w_shape) {
  return {x_shape, row_shape(x_shape)};
}

std::vector<paddle::DataType> RmsNormInferDtype(const paddle::DataType& x_dtype,
                                                const paddle::DataType& w_dtype) {
  return {x_dtype, acc_dtype(x_dtype)};
}

}  // namespace llama_ops

PD_BUILD_OP(fused_rms_norm)
    .Inputs({"X", "Weight"})
    .Outputs({"Out", "InvRms"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(llama_ops::RmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::RmsNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::RmsNormInferDtype));

PD_BUILD_GRAD_OP(fused_rms_norm)
    .Inputs({"X", "Weight", "InvRms", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(llama_ops::RmsNormBackward));
