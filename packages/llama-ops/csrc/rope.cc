// fused_rope: rotary position embedding in the rotate-half convention of LLaMA / Hugging Face,
//   out = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]
// applied to q [b, s, hq, d] and k [b, s, hk, d] in one pass (hq != hk for grouped-query attention).
// cos/sin hold s*d values ([s, d] or [1, s, 1, d]) or b*s*d values (per-sample positions). The
// rotation is orthogonal, so the backward applies its transpose to the incoming gradient:
//   dx1 = g1 * cos1 + g2 * sin2,   dx2 = g2 * cos2 - g1 * sin1.
// cos and sin receive no gradient.
#include "rows.h"
#ifdef PADDLE_WITH_CUDA
#include "cuda_launchers.h"
#endif

namespace llama_ops {
namespace {

template <typename T>
void rope_cpu(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
              int64_t seq, bool per_batch, int sign, paddle::Tensor& out) {
  const auto& shape = x.shape();
  const int64_t heads = shape[2];
  const int64_t d = shape[3];
  const int64_t rows = shape[0] * shape[1];
  const T* xp = x.data<T>();
  const T* cp = cos.data<T>();
  const T* sp = sin.data<T>();
  T* op = out.data<T>();
  for_each_row(rows, heads * d, [&](int64_t r) {
    const int64_t table_row = per_batch ? r : r % seq;
    rope_row<T>(xp + r * heads * d, cp + table_row * d, sp + table_row * d, op + r * heads * d,
                heads, d, sign);
  });
}

void apply(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
           bool per_batch, int sign, paddle::Tensor& out) {
  const int64_t seq = x.shape()[1];
  if (x.numel() == 0) return;
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) {
    cuda::rope_apply(x, cos, sin, seq, per_batch, sign, out);
    return;
  }
#endif
  PD_CHECK(x.is_cpu(), "fused_rope: no kernel for this device in this build");
  PD_DISPATCH_FLOATING_AND_HALF_TYPES(x.dtype(), "fused_rope", ([&] {
    rope_cpu<data_t>(x, cos, sin, seq, per_batch, sign, out);
  }));
}

// Returns whether cos/sin carry one table per batch sample.
bool check_inputs(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& cos,
                  const paddle::Tensor& sin) {
  const auto& qs = q.shape();
  const auto& ks = k.shape();
  PD_CHECK(qs.size() == 4 && ks.size() == 4,
           "fused_rope: q and k must be [batch, seq, heads, head_dim]");
  PD_CHECK(qs[0] == ks[0] && qs[1] == ks[1] && qs[3] == ks[3],
           "fused_rope: q and k differ in batch, seq or head_dim");
  PD_CHECK(qs[3] % 2 == 0, "fused_rope: head_dim must be even, got ", qs[3]);
  check_same_dtype(q, k, "fused_rope q/k");
  check_same_dtype(q, cos, "fused_rope q/cos");
  check_same_dtype(q, sin, "fused_rope q/sin");
  PD_CHECK(cos.numel() == sin.numel(), "fused_rope: cos and sin differ in size");
  PD_CHECK(!cos.shape().empty() && cos.shape().back() == qs[3],
           "fused_rope: last axis of cos/sin must be head_dim ", qs[3]);
  const int64_t table = qs[1] * qs[3];
  PD_CHECK(cos.numel() == table || cos.numel() == qs[0] * table,
           "fused_rope: cos/sin must hold seq*head_dim or batch*seq*head_dim values");
  return cos.numel() != table;
}

}  // namespace

std::vector<paddle::Tensor> RopeForward(const paddle::Tensor& q_in, const paddle::Tensor& k_in,
                                        const paddle::Tensor& cos_in,
                                        const paddle::Tensor& sin_in) {
  const bool per_batch = check_inputs(q_in, k_in, cos_in, sin_in);
  const paddle::Tensor q = dense(q_in), k = dense(k_in), cos = dense(cos_in), sin = dense(sin_in);
  auto q_out = paddle::empty(q.shape(), q.dtype(), q.place());
  auto k_out = paddle::empty(k.shape(), k.dtype(), k.place());
  apply(q, cos, sin, per_batch, +1, q_out);
  apply(k, cos, sin, per_batch, +1, k_out);
  return {q_out, k_out};
}

std::vector<paddle::Tensor> RopeBackward(const paddle::Tensor& cos_in, const paddle::Tensor& sin_in,
                                         const paddle::Tensor& gq_in,
                                         const paddle::Tensor& gk_in) {
  const paddle::Tensor gq = dense(gq_in), gk = dense(gk_in), cos = dense(cos_in),
                       sin = dense(sin_in);
  const bool per_batch = cos.numel() != gq.shape()[1] * gq.shape()[3];
  auto dq = paddle::empty(gq.shape(), gq.dtype(), gq.place());
  auto dk = paddle::empty(gk.shape(), gk.dtype(), gk.place());
  apply(gq, cos, sin, per_batch, -1, dq);
  apply(gk, cos, sin, per_batch, -1, dk);
  return {dq, dk};
}

std::vector<std::vector<int64_t>> RopeInferShape(const std::vector<int64_t>& q_shape,
                                                 const std::vector<int64_t>& k_shape,
                                                 const std::vector<int64_t>& cos_shape,
                                                 const std::vector<int64_t>& sin_shape) {
  return {q_shape, k_shape};
}

std::vector<paddle::DataType> RopeInferDtype(const paddle::DataType& q_dtype,
                                             const paddle::DataType& k_dtype,
                                             const paddle::DataType& cos_dtype,
                                             const paddle::DataType& sin_dtype) {
  return {q_dtype, k_dtype};
}

// The grad op does not see q and k, so static graphs need its output shapes spelled out.
std::vector<std::vector<int64_t>> RopeGradInferShape(const std::vector<int64_t>& cos_shape,
                                                     const std::vector<int64_t>& sin_shape,
                                                     const std::vector<int64_t>& gq_shape,
                                                     const std::vector<int64_t>& gk_shape) {
  return {gq_shape, gk_shape};
}

std::vector<paddle::DataType> RopeGradInferDtype(const paddle::DataType& cos_dtype,
                                                 const paddle::DataType& sin_dtype,
                                                 const paddle::DataType& gq_dtype,
                                                 const paddle::DataType& gk_dtype) {
  return {gq_dtype, gk_dtype};
}

}  // namespace llama_ops

PD_BUILD_OP(fused_rope)
    .Inputs({"Q", "K", "Cos", "Sin"})
    .Outputs({"QOut", "KOut"})
    .SetKernelFn(PD_KERNEL(llama_ops::RopeForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::RopeInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::RopeInferDtype));

PD_BUILD_GRAD_OP(fused_rope)
    .Inputs({"Cos", "Sin", paddle::Grad("QOut"), paddle::Grad("KOut")})
    .Outputs({paddle::Grad("Q"), paddle::Grad("K")})
    .SetKernelFn(PD_KERNEL(llama_ops::RopeBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::RopeGradInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::RopeGradInferDtype));
