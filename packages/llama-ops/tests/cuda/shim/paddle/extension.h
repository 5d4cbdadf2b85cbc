// A stand-in for the few pieces of Paddle's custom-operator API that llama-ops' CUDA launchers
// (csrc/*.cu) use, so those files compile unchanged with nvcc alone and run on a GPU machine that
// has no Paddle (check_kernels.cu). It is a test fixture, never part of the wheel: the real
// paddle/extension.h is used in every build. Only what the launchers call is here, with Paddle's
// meaning: Tensor (shape, numel, dtype, typed data pointer, stream, place), empty(), the 16-bit
// float types (layout-compatible with CUDA's) and PD_DISPATCH_FLOATING_AND_HALF_TYPES.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

namespace paddle {

struct float16 {
  uint16_t x;
};
struct bfloat16 {
  uint16_t x;
};

enum class DataType { FLOAT32, FLOAT64, FLOAT16, BFLOAT16 };

inline size_t size_of(DataType t) {
  return t == DataType::FLOAT64 ? 8 : t == DataType::FLOAT32 ? 4 : 2;
}

struct Place {};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::vector<int64_t> shape, DataType dtype) : shape_(std::move(shape)), dtype_(dtype) {
    void* p = nullptr;
    const size_t bytes = static_cast<size_t>(numel() > 0 ? numel() : 1) * size_of(dtype_);
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      std::fprintf(stderr, "cudaMalloc of %zu bytes failed\n", bytes);
      std::exit(1);
    }
    buffer_ = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
  }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape_) n *= s;
    return n;
  }
  DataType dtype() const { return dtype_; }
  Place place() const { return Place{}; }
  cudaStream_t stream() const { return nullptr; }  // the default stream
  template <typename T>
  T* data() const {
    return static_cast<T*>(buffer_.get());
  }
  size_t bytes() const { return static_cast<size_t>(numel()) * size_of(dtype_); }

 private:
  std::vector<int64_t> shape_;
  DataType dtype_ = DataType::FLOAT32;
  std::shared_ptr<void> buffer_;
};

inline Tensor empty(const std::vector<int64_t>& shape, DataType dtype, Place) {
  return Tensor(shape, dtype);
}

}  // namespace paddle

#define LLAMA_OPS_SHIM_CASE(ENUM, TYPE, ...) \
  case ::paddle::DataType::ENUM: {           \
    using data_t = TYPE;                     \
    __VA_ARGS__();                           \
    break;                                   \
  }

#define PD_DISPATCH_FLOATING_AND_HALF_TYPES(TYPE, NAME, ...)                  \
  [&] {                                                                       \
    switch (TYPE) {                                                           \
      LLAMA_OPS_SHIM_CASE(FLOAT32, float, __VA_ARGS__)                        \
      LLAMA_OPS_SHIM_CASE(FLOAT64, double, __VA_ARGS__)                       \
      LLAMA_OPS_SHIM_CASE(FLOAT16, ::paddle::float16, __VA_ARGS__)            \
      LLAMA_OPS_SHIM_CASE(BFLOAT16, ::paddle::bfloat16, __VA_ARGS__)          \
      default:                                                                \
        std::fprintf(stderr, "%s: unsupported dtype\n", NAME);                \
        std::exit(1);                                                         \
    }                                                                         \
  }()
