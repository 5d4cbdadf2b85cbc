// Shared pieces of the CUDA kernels: dtype dispatch to native CUDA types and float math helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "paddle/extension.h"

namespace llama_ops {
namespace cuda {

template <typename T>
struct Native {
  using type = T;
};
template <>
struct Native<paddle::float16> {
  using type = __half;
};
template <>
struct Native<paddle::bfloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
struct AccT {
  using type = float;
};
template <>
struct AccT<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(double v) {
  return static_cast<T>(v);
}

__device__ __forceinline__ float acc_exp(float v) { return __expf(v); }
__device__ __forceinline__ double acc_exp(double v) { return exp(v); }
__device__ __forceinline__ float acc_rsqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double acc_rsqrt(double v) { return rsqrt(v); }

// Sum over a block whose size is a multiple of 32 (at most 1024). `shared` holds 32 values.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? shared[threadIdx.x] : A(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

template <typename PT>
inline paddle::DataType acc_dtype_of() {
  return std::is_same<PT, double>::value ? paddle::DataType::FLOAT64 : paddle::DataType::FLOAT32;
}

inline int blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65535 * 16 ? b : 65535 * 16);
}

}  // namespace cuda
}  // namespace llama_ops
