// Entry points of the CUDA kernels (*.cu), compiled only when Paddle is a CUDA build.
#pragma once

#include "paddle/extension.h"

namespace llama_ops {
namespace cuda {

void rms_norm_forward(const paddle::Tensor& x, const paddle::Tensor& weight, float eps,
                      paddle::Tensor& out, paddle::Tensor& inv_rms);
void rms_norm_backward(const paddle::Tensor& x, const paddle::Tensor& weight,
                       const paddle::Tensor& inv_rms, const paddle::Tensor& grad_out,
                       paddle::Tensor& grad_x, paddle::Tensor& grad_weight);

// sign = +1 applies the rotation, -1 its transpose (the backward pass).
void rope_apply(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
                int64_t seq, bool per_batch, int sign, paddle::Tensor& out);

void swiglu_forward(const paddle::Tensor& gate, const paddle::Tensor& up, int64_t rows,
                    int64_t inner, int64_t in_stride, paddle::Tensor& out);
void swiglu_backward(const paddle::Tensor& gate, const paddle::Tensor& up,
                     const paddle::Tensor& grad_out, int64_t rows, int64_t inner,
                     int64_t in_stride, paddle::Tensor& grad_gate, paddle::Tensor& grad_up);

}  // namespace cuda
}  // namespace llama_ops
