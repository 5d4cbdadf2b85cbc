// fused_causal_softmax: the probabilities of causal self-attention from its raw scores,
//   out = softmax(x * scale + causal mask)   over the last axis of x [..., s, s],
// where row i (a query position) sees columns j <= i and gets probability 0 beyond. One pass reads
// the scores and writes the probabilities: no scaled copy, no mask tensor, no masked sum. Backward,
// with P the probabilities and G the incoming gradient, for j <= i (0 beyond):
//   dx_j = scale * P_j * (G_j - sum_k P_k G_k).
// A row holding a NaN or infinite score comes out NaN (vexp would otherwise clamp it to a finite
// value and hide a broken head). CPU only: on GPU, llama-model's attention is flash attention.
#include <limits>

#include "common.h"

namespace llama_ops {
namespace {

template <typename T>
LLAMA_OPS_CPU_CLONES void causal_softmax_row(const T* __restrict x, T* __restrict out,
                                             int64_t seen, int64_t n, float scale_f) {
  using A = typename Acc<T>::type;
  const A scale = static_cast<A>(scale_f);
  A top = -std::numeric_limits<A>::infinity();
  A probe = 0;  // x * 0 is NaN exactly for a NaN or infinite x
#pragma omp simd reduction(max : top) reduction(+ : probe)
  for (int64_t j = 0; j < seen; ++j) {
    top = load(x[j]) > top ? load(x[j]) : top;
    probe += load(x[j]) * A(0);
  }
  if (probe != probe) {  // a non-finite score: the row is NaN, as the composed softmax makes it
    for (int64_t j = 0; j < n; ++j) out[j] = store<T>(std::numeric_limits<A>::quiet_NaN());
    return;
  }
  // scale > 0, so the largest scaled score is scale * top.
  A sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < seen; ++j) {
    const A e = vexp((load(x[j]) - top) * scale);
    out[j] = store<T>(e);
    sum += e;
  }
  const A inv = A(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < seen; ++j) out[j] = store<T>(load(out[j]) * inv);
  for (int64_t j = seen; j < n; ++j) out[j] = store<T>(A(0));
}

template <typename T>
LLAMA_OPS_CPU_CLONES void causal_softmax_grad_row(const T* __restrict p, const T* __restrict g,
                                                  T* __restrict dx, int64_t seen, int64_t n,
                                                  float scale_f) {
  using A = typename Acc<T>::type;
  const A scale = static_cast<A>(scale_f);
  A dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < seen; ++j) dot += load(p[j]) * load(g[j]);
#pragma omp simd
  for (int64_t j = 0; j < seen; ++j) dx[j] = store<T>(scale * load(p[j]) * (load(g[j]) - dot));
  for (int64_t j = seen; j < n; ++j) dx[j] = store<T>(A(0));
}

// Returns the sequence length s of x [..., s, s].
int64_t check_scores(const paddle::Tensor& x, float scale) {
  const auto& shape = x.shape();
  PD_CHECK(shape.size() >= 2 && shape[shape.size() - 1] == shape[shape.size() - 2],
           "fused_causal_softmax: scores must be [..., seq, seq]");
  PD_CHECK(scale > 0.0f, "fused_causal_softmax: scale must be positive, got ", scale);
  PD_CHECK(x.is_cpu(), "fused_causal_softmax: no kernel for this device (CPU only)");
  return shape.back();
}

}  // namespace

std::vector<paddle::Tensor> CausalSoftmaxForward(const paddle::Tensor& x_in, float scale) {
  const int64_t s = check_scores(x_in, scale);
  const paddle::Tensor x = dense(x_in);
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  if (x.numel() == 0) return {out};
  const int64_t rows = x.numel() / s;
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_causal_softmax", ([&] {
    const data_t* xp = x.data<data_t>();
    data_t* op = out.data<data_t>();
    for_each_row(rows, s, [&](int64_t r) {
      causal_softmax_row<data_t>(xp + r * s, op + r * s, r % s + 1, s, scale);
    });
  }));
  return {out};
}

std::vector<paddle::Tensor> CausalSoftmaxBackward(const paddle::Tensor& out_in,
                                                  const paddle::Tensor& grad_in, float scale) {
  const int64_t s = check_scores(out_in, scale);
  const paddle::Tensor p = dense(out_in), g = dense(grad_in);
  auto dx = paddle::empty(p.shape(), p.dtype(), p.place());
  if (p.numel() == 0) return {dx};
  const int64_t rows = p.numel() / s;
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(p.dtype(), "fused_causal_softmax_grad", ([&] {
    const data_t* pp = p.data<data_t>();
    const data_t* gp = g.data<data_t>();
    data_t* dp = dx.data<data_t>();
    for_each_row(rows, s, [&](int64_t r) {
      causal_softmax_grad_row<data_t>(pp + r * s, gp + r * s, dp + r * s, r % s + 1, s, scale);
    });
  }));
  return {dx};
}

std::vector<std::vector<int64_t>> CausalSoftmaxInferShape(const std::vector<int64_t>& x_shape) {
  return {x_shape};
}

std::vector<paddle::DataType> CausalSoftmaxInferDtype(const paddle::DataType& x_dtype) {
  return {x_dtype};
}

// The grad op does not see the scores, so static graphs need its output shape spelled out.
std::vector<std::vector<int64_t>> CausalSoftmaxGradInferShape(
    const std::vector<int64_t>& out_shape, const std::vector<int64_t>& grad_shape) {
  return {out_shape};
}

std::vector<paddle::DataType> CausalSoftmaxGradInferDtype(const paddle::DataType& out_dtype,
                                                          const paddle::DataType& grad_dtype) {
  return {out_dtype};
}

}  // namespace llama_ops

PD_BUILD_OP(fused_causal_softmax)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(llama_ops::CausalSoftmaxForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::CausalSoftmaxInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::CausalSoftmaxInferDtype));

PD_BUILD_GRAD_OP(fused_causal_softmax)
    .Inputs({"Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(llama_ops::CausalSoftmaxBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::CausalSoftmaxGradInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::CausalSoftmaxGradInferDtype));
