// fused_swiglu: out = silu(gate) * up = gate * sigmoid(gate) * up, and fused_swiglu_packed, the same
// on one tensor [..., 2 * inner] whose first half is gate and second half up (the layout of a fused
// gate_up projection and of paddle.incubate.nn.functional.swiglu(x)). Backward, with s = sigmoid(gate):
//   dgate = g * up * s * (1 + gate * (1 - s)),   dup = g * gate * s.
#include "rows.h"
#ifdef PADDLE_WITH_CUDA
#include "cuda_launchers.h"
#endif

namespace llama_ops {
namespace {

template <typename T>
LLAMA_OPS_CPU_CLONES void swiglu_grad_row(const T* __restrict gate, const T* __restrict up,
                                          const T* __restrict grad, T* __restrict dgate,
                                          T* __restrict dup, int64_t n) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A g = load(gate[i]);
    const A u = load(up[i]);
    const A go = load(grad[i]);
    const A s = sigmoid(g);
    dgate[i] = store<T>(go * u * s * (A(1) + g * (A(1) - s)));
    dup[i] = store<T>(go * g * s);
  }
}

// Rows of `inner` elements; gate/up rows start every in_stride elements (inner when they are separate
// tensors, 2 * inner when packed) and so do the gradient rows written for them.
template <typename T>
void swiglu_forward_cpu(const T* gate, const T* up, T* out, int64_t rows, int64_t inner,
                        int64_t in_stride) {
  for_each_row(rows, inner, [&](int64_t r) {
    swiglu_row<T>(gate + r * in_stride, up + r * in_stride, out + r * inner, inner);
  });
}

template <typename T>
void swiglu_backward_cpu(const T* gate, const T* up, const T* grad, T* dgate, T* dup, int64_t rows,
                         int64_t inner, int64_t in_stride) {
  for_each_row(rows, inner, [&](int64_t r) {
    swiglu_grad_row<T>(gate + r * in_stride, up + r * in_stride, grad + r * inner,
                       dgate + r * in_stride, dup + r * in_stride, inner);
  });
}

std::vector<int64_t> halved_last(std::vector<int64_t> shape) {
  shape.back() /= 2;
  return shape;
}

}  // namespace

std::vector<paddle::Tensor> SwigluForward(const paddle::Tensor& gate_in,
                                          const paddle::Tensor& up_in) {
  PD_CHECK(gate_in.shape() == up_in.shape(), "fused_swiglu: gate and up differ in shape");
  check_same_dtype(gate_in, up_in, "fused_swiglu gate/up");
  const paddle::Tensor gate = dense(gate_in), up = dense(up_in);
  auto out = paddle::empty(gate.shape(), gate.dtype(), gate.place());
  if (gate.numel() == 0) return {out};
  const int64_t inner = gate.shape().empty() ? 1 : gate.shape().back();
  const int64_t rows = gate.numel() / inner;
#ifdef PADDLE_WITH_CUDA
  if (gate.is_gpu()) {
    cuda::swiglu_forward(gate, up, rows, inner, inner, out);
    return {out};
  }
#endif
  PD_CHECK(gate.is_cpu(), "fused_swiglu: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(gate.dtype(), "fused_swiglu", ([&] {
    swiglu_forward_cpu<data_t>(gate.data<data_t>(), up.data<data_t>(), out.data<data_t>(), rows,
                               inner, inner);
  }));
  return {out};
}

std::vector<paddle::Tensor> SwigluBackward(const paddle::Tensor& gate_in,
                                           const paddle::Tensor& up_in,
                                           const paddle::Tensor& grad_in) {
  const paddle::Tensor gate = dense(gate_in), up = dense(up_in), grad = dense(grad_in);
  auto dgate = paddle::empty(gate.shape(), gate.dtype(), gate.place());
  auto dup = paddle::empty(up.shape(), up.dtype(), up.place());
  if (gate.numel() == 0) return {dgate, dup};
  const int64_t inner = gate.shape().empty() ? 1 : gate.shape().back();
  const int64_t rows = gate.numel() / inner;
#ifdef PADDLE_WITH_CUDA
  if (gate.is_gpu()) {
    cuda::swiglu_backward(gate, up, grad, rows, inner, inner, dgate, dup);
    return {dgate, dup};
  }
#endif
  PD_CHECK(gate.is_cpu(), "fused_swiglu_grad: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(gate.dtype(), "fused_swiglu_grad", ([&] {
    swiglu_backward_cpu<data_t>(gate.data<data_t>(), up.data<data_t>(), grad.data<data_t>(),
                                dgate.data<data_t>(), dup.data<data_t>(), rows, inner, inner);
  }));
  return {dgate, dup};
}

std::vector<paddle::Tensor> SwigluPackedForward(const paddle::Tensor& x_in) {
  PD_CHECK(!x_in.shape().empty() && x_in.shape().back() % 2 == 0,
           "fused_swiglu_packed: last axis must be even (gate and up halves)");
  const paddle::Tensor x = dense(x_in);
  auto out = paddle::empty(halved_last(x.shape()), x.dtype(), x.place());
  if (x.numel() == 0) return {out};
  const int64_t inner = x.shape().back() / 2;
  const int64_t rows = x.numel() / (2 * inner);
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) {
    cuda::swiglu_forward(x, x, rows, inner, 2 * inner, out);
    return {out};
  }
#endif
  PD_CHECK(x.is_cpu(), "fused_swiglu_packed: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_swiglu_packed", ([&] {
    const data_t* p = x.data<data_t>();
    swiglu_forward_cpu<data_t>(p, p + inner, out.data<data_t>(), rows, inner, 2 * inner);
  }));
  return {out};
}

std::vector<paddle::Tensor> SwigluPackedBackward(const paddle::Tensor& x_in,
                                                 const paddle::Tensor& grad_in) {
  const paddle::Tensor x = dense(x_in), grad = dense(grad_in);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  if (x.numel() == 0) return {dx};
  const int64_t inner = x.shape().back() / 2;
  const int64_t rows = x.numel() / (2 * inner);
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) {
    cuda::swiglu_backward(x, x, grad, rows, inner, 2 * inner, dx, dx);
    return {dx};
  }
#endif
  PD_CHECK(x.is_cpu(), "fused_swiglu_packed_grad: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_swiglu_packed_grad", ([&] {
    const data_t* p = x.data<data_t>();
    data_t* d = dx.data<data_t>();
    swiglu_backward_cpu<data_t>(p, p + inner, grad.data<data_t>(), d, d + inner, rows, inner,
                                2 * inner);
  }));
  return {dx};
}

std::vector<std::vector<int64_t>> SwigluInferShape(const std::vector<int64_t>& gate_shape,
                                                   const std::vector<int64_t>& up_shape) {
  return {gate_shape};
}

std::vector<paddle::DataType> SwigluInferDtype(const paddle::DataType& gate_dtype,
                                               const paddle::DataType& up_dtype) {
  return {gate_dtype};
}

std::vector<std::vector<int64_t>> SwigluPackedInferShape(const std::vector<int64_t>& x_shape) {
  return {halved_last(x_shape)};
}

std::vector<paddle::DataType> SwigluPackedInferDtype(const paddle::DataType& x_dtype) {
  return {x_dtype};
}

}  // namespace llama_ops

PD_BUILD_OP(fused_swiglu)
    .Inputs({"Gate", "Up"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(llama_ops::SwigluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::SwigluInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::SwigluInferDtype));

PD_BUILD_GRAD_OP(fused_swiglu)
    .Inputs({"Gate", "Up", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Gate"), paddle::Grad("Up")})
    .SetKernelFn(PD_KERNEL(llama_ops::SwigluBackward));

PD_BUILD_OP(fused_swiglu_packed)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(llama_ops::SwigluPackedForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::SwigluPackedInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::SwigluPackedInferDtype));

PD_BUILD_GRAD_OP(fused_swiglu_packed)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(llama_ops::SwigluPackedBackward));
