// fused_decoder_layer: one LLaMA decoder layer over the new tokens of a KV-cache step, for CPU
// inference (forward only, float32):
//
//   h = rms_norm(x) ; q, k, v = h Wqkv ; q, k = rope(q, k) ; cache[start + i] = k, v
//   x = x + attention(q, cache) Wo ; x = x + down(silu(rms_norm(x) Wgate) * (rms_norm(x) Wup))
//
// x is [b * s, hidden] (s new tokens per row, the first at cache slot `start`); the weights are
// [in, out] with q|k|v and gate|up side by side (one GEMM each); cos/sin are the rotary tables
// [max_positions, head_dim], read at each token's position (positions [b * s] int64); the caches
// [b, kv_heads, capacity, head_dim] are written in place. Query i of a row sees slots 0..start+i
// with the additive mask added to its scores: [b, 1, 1, s, s] (a prefill, start 0) or
// [b, kv_heads, group * s, capacity] (a step), the layouts of llama-model's functional.forward,
// which this op computes in one call instead of ~25 Paddle operations: what a decode step of a
// small model costs is mostly per-operation overhead, in an inference program even more than in
// dygraph.
#include <limits>

#include "blas.h"
#include "rows.h"

namespace llama_ops {
namespace {

struct Shape {
  int64_t b, s, hidden, nq, nk, d, capacity, inter, start;
  int64_t group() const { return nq / nk; }
  int64_t qkv() const { return (nq + 2 * nk) * d; }
};

// Where the mask value of (row r, kv head h, group member g, query i, slot j) lives.
struct MaskIndex {
  int64_t row, head, member, query;  // strides; slots are contiguous
  int64_t at(int64_t r, int64_t h, int64_t g, int64_t i) const {
    return r * row + h * head + g * member + i * query;
  }
};

MaskIndex mask_index(const std::vector<int64_t>& m, const Shape& sh) {
  if (m.size() == 5) {  // [b, 1, 1, s, s]: one mask for all heads
    PD_CHECK(m[0] == sh.b && m[1] == 1 && m[2] == 1 && m[3] == sh.s && m[4] == sh.s && sh.start == 0,
             "fused_decoder_layer: a [b, 1, 1, s, s] mask is a prefill's (start 0)");
    return {sh.s * sh.s, 0, 0, sh.s};
  }
  PD_CHECK(m.size() == 4 && m[0] == sh.b && m[1] == sh.nk && m[2] == sh.group() * sh.s &&
               m[3] == sh.capacity,
           "fused_decoder_layer: the mask must be [b, 1, 1, s, s] or [b, kv_heads, group * s, "
           "capacity]");
  const int64_t query = sh.capacity;
  return {sh.nk * sh.group() * sh.s * query, sh.group() * sh.s * query, sh.s * query, query};
}

// In place: raw dot products -> softmax(raw * scale + mask) over slots 0..seen-1.
LLAMA_OPS_CPU_CLONES void softmax_row(float* __restrict scores, const float* __restrict mask,
                                      int64_t seen, float scale) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < seen; ++j) {
    scores[j] = scores[j] * scale + mask[j];
    top = scores[j] > top ? scores[j] : top;
  }
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < seen; ++j) {
    scores[j] = vexp(scores[j] - top);
    total += scores[j];
  }
  const float inv = 1.f / total;
#pragma omp simd
  for (int64_t j = 0; j < seen; ++j) scores[j] *= inv;
}

// One query against slots 0..seen-1 of one key/value head: out = softmax(q K^T * scale + mask) V.
// A step's few dot products, where a GEMM call would cost more than the arithmetic.
LLAMA_OPS_CPU_CLONES void attend(const float* __restrict q, const float* __restrict keys,
                                 const float* __restrict values, const float* __restrict mask,
                                 int64_t seen, int64_t d, float scale, float* __restrict scores,
                                 float* __restrict out) {
  for (int64_t j = 0; j < seen; ++j) {
    const float* k = keys + j * d;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t e = 0; e < d; ++e) dot += q[e] * k[e];
    scores[j] = dot;
  }
  softmax_row(scores, mask, seen, scale);
  for (int64_t e = 0; e < d; ++e) out[e] = 0.f;
  for (int64_t j = 0; j < seen; ++j) {
    const float p = scores[j];
    const float* v = values + j * d;
#pragma omp simd
    for (int64_t e = 0; e < d; ++e) out[e] += p * v[e];
  }
}

// RMSNorm of `rows` rows of h values (the inverse RMS the training op keeps is not needed here).
void rms_norm_rows(const float* x, const float* w, float* out, int64_t rows, int64_t h, float eps) {
  float unused;
  for (int64_t t = 0; t < rows; ++t) rms_norm_row<float>(x + t * h, w, out + t * h, &unused, h, eps);
}

void check(const paddle::Tensor& t, std::vector<int64_t> shape, const char* name) {
  PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32 && t.is_contiguous(),
           "fused_decoder_layer: ", name, " must be a contiguous float32 CPU tensor");
  PD_CHECK(t.shape() == shape, "fused_decoder_layer: ", name, " has the wrong shape");
}

}  // namespace

std::vector<paddle::Tensor> DecoderLayerForward(
    const paddle::Tensor& x, const paddle::Tensor& attn_norm, const paddle::Tensor& w_qkv,
    const paddle::Tensor& w_o, const paddle::Tensor& mlp_norm, const paddle::Tensor& w_gate_up,
    const paddle::Tensor& w_down, const paddle::Tensor& cos, const paddle::Tensor& sin,
    const paddle::Tensor& positions, const paddle::Tensor& mask, const paddle::Tensor& start_t,
    paddle::Tensor& key_cache,
    paddle::Tensor& value_cache, float eps, int num_heads, int num_kv_heads) {
  PD_CHECK(key_cache.shape().size() == 4, "fused_decoder_layer: caches are [b, kv_heads, capacity, d]");
  PD_CHECK(x.shape().size() == 2 && w_down.shape().size() == 2,
           "fused_decoder_layer: x must be [b * s, hidden] and the weights 2-D");
  PD_CHECK(num_heads > 0 && num_kv_heads > 0 && x.shape()[1] > 0,
           "fused_decoder_layer: head counts and hidden size must be positive");
  PD_CHECK(key_cache.shape()[3] % 2 == 0, "fused_decoder_layer: head_dim must be even");
  PD_CHECK(start_t.is_cpu() && start_t.dtype() == paddle::DataType::INT64 && start_t.numel() == 1,
           "fused_decoder_layer: start must be one int64 on the CPU");
  const auto& cs = key_cache.shape();
  Shape sh{cs[0], 0, x.shape().back(), num_heads, num_kv_heads, cs[3], cs[2],
           w_down.shape()[0], start_t.data<int64_t>()[0]};
  PD_CHECK(sh.b > 0 && x.numel() % (sh.b * sh.hidden) == 0 && cs[1] == sh.nk && sh.nq % sh.nk == 0,
           "fused_decoder_layer: x, the caches and the head counts disagree");
  sh.s = x.numel() / (sh.b * sh.hidden);
  const int64_t tokens = sh.b * sh.s, H = sh.hidden, d = sh.d;
  PD_CHECK(sh.start >= 0 && sh.start + sh.s <= sh.capacity,
           "fused_decoder_layer: slots ", sh.start, "..", sh.start + sh.s, " exceed the capacity ",
           sh.capacity);
  check(x, {tokens, H}, "x");
  check(attn_norm, {H}, "attn_norm");
  check(mlp_norm, {H}, "mlp_norm");
  check(w_qkv, {H, sh.qkv()}, "w_qkv");
  check(w_o, {sh.nq * d, H}, "w_o");
  check(w_gate_up, {H, 2 * sh.inter}, "w_gate_up");
  check(w_down, {sh.inter, H}, "w_down");
  PD_CHECK(cos.shape().size() == 2 && cos.shape()[1] == d, "fused_decoder_layer: cos must be [positions, head_dim]");
  check(cos, cos.shape(), "cos");
  check(sin, cos.shape(), "sin");
  PD_CHECK(positions.is_cpu() && positions.dtype() == paddle::DataType::INT64 &&
               positions.numel() == tokens && positions.is_contiguous(),
           "fused_decoder_layer: positions must be b * s int64 on the CPU");
  const int64_t* pos = positions.data<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    PD_CHECK(pos[t] >= 0 && pos[t] < cos.shape()[0], "fused_decoder_layer: position ", pos[t],
             " is outside the rotary tables");
  check(key_cache, cs, "key_cache");
  check(value_cache, cs, "value_cache");
  PD_CHECK(mask.is_cpu() && mask.dtype() == paddle::DataType::FLOAT32 && mask.is_contiguous(),
           "fused_decoder_layer: mask must be a contiguous float32 CPU tensor");
  const MaskIndex mi = mask_index(mask.shape(), sh);

  // Scratch for the activations, reused from call to call (a step's few kilobytes; a prefill's
  // is released after it, below). A prefill's attention adds one head's [s, start + s] scores.
  thread_local std::vector<float> scratch;
  const int64_t qkv_n = sh.qkv(), attn_n = sh.nq * d, inter = sh.inter, seen = sh.start + sh.s;
  scratch.resize(tokens * (H + qkv_n + 2 * attn_n + H + 3 * inter + H) + sh.s * seen);
  float* h = scratch.data();
  float* qkv = h + tokens * H;
  float* q = qkv + tokens * qkv_n;
  float* attn = q + tokens * attn_n;
  float* proj = attn + tokens * attn_n;  // o, then down: [tokens, H]
  float* gate_up = proj + tokens * H;
  float* act = gate_up + tokens * 2 * inter;
  float* scores = act + tokens * inter;
  auto out = paddle::empty({tokens, H}, paddle::DataType::FLOAT32, x.place());
  float* op = out.data<float>();
  const float* xp = x.data<float>();

  // Attention block.
  rms_norm_rows(xp, attn_norm.data<float>(), h, tokens, H, eps);
  sgemm(h, w_qkv.data<float>(), qkv, tokens, H, qkv_n, false);
  float* kc = key_cache.data<float>();
  float* vc = value_cache.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t r = t / sh.s, slot = sh.start + t % sh.s;
    const float* row = qkv + t * qkv_n;
    const float* c = cos.data<float>() + pos[t] * d;
    const float* sn = sin.data<float>() + pos[t] * d;
    rope_row<float>(row, c, sn, q + t * attn_n, sh.nq, d, +1);
    for (int64_t hk = 0; hk < sh.nk; ++hk) {
      const int64_t at = ((r * sh.nk + hk) * sh.capacity + slot) * d;
      rope_row<float>(row + (sh.nq + hk) * d, c, sn, kc + at, 1, d, +1);
      std::memcpy(vc + at, row + (sh.nq + sh.nk + hk) * d, d * sizeof(float));
    }
  }
  // A step (s = 1): each head's dot products in a loop. Several new tokens (a prefill): each head's
  // scores and weighted values as two GEMMs, the causal softmax between them. Serial outside the
  // GEMMs: they run on the BLAS threads, which spin between calls; a parallel region of this
  // library's OpenMP runtime would fight them for the cores (measured: 6x slower at batch 8).
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const int64_t g = sh.group();
  const float* mp = mask.data<float>();
  for (int64_t r = 0; r < sh.b; ++r)
    for (int64_t hk = 0; hk < sh.nk; ++hk) {
      const float* keys = kc + (r * sh.nk + hk) * sh.capacity * d;
      const float* values = vc + (r * sh.nk + hk) * sh.capacity * d;
      for (int64_t m = 0; m < g; ++m) {
        const int64_t head = hk * g + m;
        float* q_h = q + (r * sh.s * sh.nq + head) * d;  // query i at q_h + i * attn_n
        float* out_h = attn + (r * sh.s * sh.nq + head) * d;
        if (sh.s == 1) {
          attend(q_h, keys, values, mp + mi.at(r, hk, m, 0), seen, d, scale, scores, out_h);
          continue;
        }
        sgemm(q_h, attn_n, keys, d, true, scores, seen, sh.s, d, seen);  // [s, seen]
        for (int64_t i = 0; i < sh.s; ++i) {
          float* row = scores + i * seen;
          const int64_t visible = sh.start + i + 1;  // causal: later slots get probability 0
          softmax_row(row, mp + mi.at(r, hk, m, i), visible, scale);
          for (int64_t j = visible; j < seen; ++j) row[j] = 0.f;
        }
        sgemm(scores, seen, values, d, false, out_h, attn_n, sh.s, seen, d);  // [s, d]
      }
    }
  sgemm(attn, w_o.data<float>(), proj, tokens, attn_n, H, false);
  for (int64_t e = 0; e < tokens * H; ++e) op[e] = xp[e] + proj[e];

  // MLP block.
  rms_norm_rows(op, mlp_norm.data<float>(), h, tokens, H, eps);
  sgemm(h, w_gate_up.data<float>(), gate_up, tokens, H, 2 * inter, false);
  for (int64_t t = 0; t < tokens; ++t)
    swiglu_row<float>(gate_up + t * 2 * inter, gate_up + t * 2 * inter + inter, act + t * inter,
                      inter);
  sgemm(act, w_down.data<float>(), proj, tokens, inter, H, false);
  for (int64_t e = 0; e < tokens * H; ++e) op[e] += proj[e];
  if (scratch.size() > (size_t{1} << 22)) std::vector<float>().swap(scratch);  // over 16 MB
  return {out};
}

// fused_norm_head: logits = rms_norm(x) W for the last hidden states x [b, hidden], W the LM head
// [hidden, vocab] (or the tied embedding [vocab, hidden], transposed_weight), float32 on the CPU.
std::vector<paddle::Tensor> NormHeadForward(const paddle::Tensor& x, const paddle::Tensor& norm,
                                            const paddle::Tensor& weight, float eps,
                                            bool transposed_weight) {
  PD_CHECK(x.shape().size() == 2 && weight.shape().size() == 2,
           "fused_norm_head: x must be [b, hidden] and the weight 2-D");
  const int64_t b = x.shape()[0], H = x.shape()[1];
  const int64_t vocab = transposed_weight ? weight.shape()[0] : weight.shape()[1];
  check(x, {b, H}, "x");
  check(norm, {H}, "norm");
  check(weight, transposed_weight ? std::vector<int64_t>{vocab, H} : std::vector<int64_t>{H, vocab},
        "weight");
  thread_local std::vector<float> h;
  h.resize(b * H);
  rms_norm_rows(x.data<float>(), norm.data<float>(), h.data(), b, H, eps);
  auto logits = paddle::empty({b, vocab}, paddle::DataType::FLOAT32, x.place());
  sgemm(h.data(), weight.data<float>(), logits.data<float>(), b, H, vocab, transposed_weight);
  return {logits};
}

std::vector<std::vector<int64_t>> NormHeadInferShape(const std::vector<int64_t>& x,
                                                     const std::vector<int64_t>& norm,
                                                     const std::vector<int64_t>& weight,
                                                     float eps, bool transposed_weight) {
  return {{x[0], transposed_weight ? weight[0] : weight[1]}};
}

std::vector<paddle::DataType> NormHeadInferDtype(const paddle::DataType& x,
                                                 const paddle::DataType& norm,
                                                 const paddle::DataType& weight) {
  return {paddle::DataType::FLOAT32};
}

std::vector<std::vector<int64_t>> DecoderLayerInferShape(
    const std::vector<int64_t>& x, const std::vector<int64_t>& attn_norm,
    const std::vector<int64_t>& w_qkv, const std::vector<int64_t>& w_o,
    const std::vector<int64_t>& mlp_norm, const std::vector<int64_t>& w_gate_up,
    const std::vector<int64_t>& w_down, const std::vector<int64_t>& cos,
    const std::vector<int64_t>& sin, const std::vector<int64_t>& positions,
    const std::vector<int64_t>& mask,
    const std::vector<int64_t>& start, const std::vector<int64_t>& key_cache,
    const std::vector<int64_t>& value_cache) {
  return {x};  // the caches are in-place outputs: Paddle takes their shapes from the inputs
}

std::vector<paddle::DataType> DecoderLayerInferDtype(
    const paddle::DataType& x, const paddle::DataType& attn_norm, const paddle::DataType& w_qkv,
    const paddle::DataType& w_o, const paddle::DataType& mlp_norm,
    const paddle::DataType& w_gate_up, const paddle::DataType& w_down,
    const paddle::DataType& cos, const paddle::DataType& sin, const paddle::DataType& positions,
    const paddle::DataType& mask,
    const paddle::DataType& start, const paddle::DataType& key_cache,
    const paddle::DataType& value_cache) {
  return {x};
}

}  // namespace llama_ops

PD_BUILD_OP(fused_decoder_layer)
    .Inputs({"X", "AttnNorm", "WQkv", "WO", "MlpNorm", "WGateUp", "WDown", "Cos", "Sin",
             "Positions", "Mask", "Start", "KeyCache", "ValueCache"})
    .Outputs({"Out", "KeyCacheOut", "ValueCacheOut"})
    .SetInplaceMap({{"KeyCache", "KeyCacheOut"}, {"ValueCache", "ValueCacheOut"}})
    .Attrs({"eps: float", "num_heads: int", "num_kv_heads: int"})
    .SetKernelFn(PD_KERNEL(llama_ops::DecoderLayerForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::DecoderLayerInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::DecoderLayerInferDtype));

PD_BUILD_OP(fused_norm_head)
    .Inputs({"X", "Norm", "Weight"})
    .Outputs({"Logits"})
    .Attrs({"eps: float", "transposed_weight: bool"})
    .SetKernelFn(PD_KERNEL(llama_ops::NormHeadForward))
    .SetInferShapeFn(PD_INFER_SHAPE(llama_ops::NormHeadInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(llama_ops::NormHeadInferDtype));

// Which GEMM the kernels above use in this process: "mkl" or "paddle" (its matmul), resolved here
// if no kernel has run yet (once per process: blas.h); for llama_ops._library.gemm_backend.
extern "C" const char* llama_ops_gemm_backend() {
  return llama_ops::find_sgemm() != nullptr ? "mkl" : "paddle";
}
