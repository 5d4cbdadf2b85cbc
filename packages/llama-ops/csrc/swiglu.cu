// CUDA kernels of fused_swiglu / fused_swiglu_packed (see swiglu.cc for the math). Elementwise over
// rows x inner; gate/up rows start every in_stride elements. When in_stride != inner the inputs are
// the packed [gate | up] tensor: `up` (and its gradient) then start inner elements into each row.
#include "cuda_common.cuh"
#include "cuda_launchers.h"

namespace llama_ops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename A>
__device__ __forceinline__ A sigmoid(A v) {
  return A(1) / (A(1) + acc_exp(-v));
}

template <typename T, typename A>
__global__ void swiglu_fwd(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                           int64_t n, int64_t inner, int64_t in_stride) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t src = (e / inner) * in_stride + e % inner;
    const A g = to_acc(gate[src]);
    out[e] = from_acc<T>(g * sigmoid(g) * to_acc(up[src]));
  }
}

template <typename T, typename A>
__global__ void swiglu_bwd(const T* __restrict__ gate, const T* __restrict__ up,
                           const T* __restrict__ grad, T* dgate, T* dup, int64_t n, int64_t inner,
                           int64_t in_stride) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t src = (e / inner) * in_stride + e % inner;
    const A g = to_acc(gate[src]);
    const A u = to_acc(up[src]);
    const A go = to_acc(grad[e]);
    const A s = sigmoid(g);
    dgate[src] = from_acc<T>(go * u * s * (A(1) + g * (A(1) - s)));
    dup[src] = from_acc<T>(go * g * s);
  }
}

template <typename PT>
void forward(const paddle::Tensor& gate, const paddle::Tensor& up, int64_t rows, int64_t inner,
             int64_t in_stride, paddle::Tensor& out) {
  using T = typename Native<PT>::type;
  using A = typename AccT<PT>::type;
  const int64_t up_offset = in_stride == inner ? 0 : inner;
  const int64_t n = rows * inner;
  swiglu_fwd<T, A><<<blocks_for(n, kThreads), kThreads, 0, gate.stream()>>>(
      reinterpret_cast<const T*>(gate.data<PT>()),
      reinterpret_cast<const T*>(up.data<PT>()) + up_offset, reinterpret_cast<T*>(out.data<PT>()),
      n, inner, in_stride);
}

template <typename PT>
void backward(const paddle::Tensor& gate, const paddle::Tensor& up, const paddle::Tensor& grad,
              int64_t rows, int64_t inner, int64_t in_stride, paddle::Tensor& dgate,
              paddle::Tensor& dup) {
  using T = typename Native<PT>::type;
  using A = typename AccT<PT>::type;
  const int64_t up_offset = in_stride == inner ? 0 : inner;
  const int64_t n = rows * inner;
  swiglu_bwd<T, A><<<blocks_for(n, kThreads), kThreads, 0, gate.stream()>>>(
      reinterpret_cast<const T*>(gate.data<PT>()),
      reinterpret_cast<const T*>(up.data<PT>()) + up_offset,
      reinterpret_cast<const T*>(grad.data<PT>()), reinterpret_cast<T*>(dgate.data<PT>()),
      reinterpret_cast<T*>(dup.data<PT>()) + up_offset, n, inner, in_stride);
}

}  // namespace

void swiglu_forward(const paddle::Tensor& gate, const paddle::Tensor& up, int64_t rows,
                    int64_t inner, int64_t in_stride, paddle::Tensor& out) {
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(gate.dtype(), "fused_swiglu (cuda)", ([&] {
    forward<data_t>(gate, up, rows, inner, in_stride, out);
  }));
}

void swiglu_backward(const paddle::Tensor& gate, const paddle::Tensor& up,
                     const paddle::Tensor& grad_out, int64_t rows, int64_t inner,
                     int64_t in_stride, paddle::Tensor& grad_gate, paddle::Tensor& grad_up) {
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(gate.dtype(), "fused_swiglu_grad (cuda)", ([&] {
    backward<data_t>(gate, up, grad_out, rows, inner, in_stride, grad_gate, grad_up);
  }));
}

}  // namespace cuda
}  // namespace llama_ops
