// GPU check of llama-ops' CUDA kernels without Paddle: the launchers of csrc/*.cu are compiled
// unchanged against shim/paddle/extension.h and run on random inputs in float64, float32, float16
// and bfloat16. Each output is compared with a float64 reference written here from the math (not
// from the kernels), evaluated on the very values the kernel saw (inputs rounded to the dtype).
// Then each kernel is timed on LLaMA-7B-sized inputs and its effective memory bandwidth compared
// with a device-to-device cudaMemcpy measured in the same run.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I tests/cuda/shim -I csrc csrc/rms_norm.cu csrc/rope.cu \
//        csrc/swiglu.cu tests/cuda/check_kernels.cu -o check_kernels
//   ./check_kernels out.jsonl [accuracy-only]     (run_on_gpu.sh does all of it)
//
// Exit status 1 if any output is outside its dtype's tolerance.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cuda_launchers.h"

using paddle::DataType;
using paddle::Tensor;
using Vec = std::vector<double>;
namespace k = llama_ops::cuda;

static void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

// ------------------------------------------------------------------ host <-> device, per dtype
static double round_to(double v, DataType t) {
  switch (t) {
    case DataType::FLOAT64: return v;
    case DataType::FLOAT32: return static_cast<float>(v);
    case DataType::FLOAT16: return __half2float(__float2half_rn(static_cast<float>(v)));
    case DataType::BFLOAT16: return __bfloat162float(__float2bfloat16_rn(static_cast<float>(v)));
  }
  return v;
}

static Tensor upload(const std::vector<int64_t>& shape, const Vec& v, DataType t) {
  Tensor out(shape, t);
  std::vector<unsigned char> bytes(out.bytes());
  for (size_t i = 0; i < v.size(); ++i) {
    switch (t) {
      case DataType::FLOAT64: reinterpret_cast<double*>(bytes.data())[i] = v[i]; break;
      case DataType::FLOAT32: reinterpret_cast<float*>(bytes.data())[i] = static_cast<float>(v[i]); break;
      case DataType::FLOAT16:
        reinterpret_cast<__half*>(bytes.data())[i] = __float2half_rn(static_cast<float>(v[i]));
        break;
      case DataType::BFLOAT16:
        reinterpret_cast<__nv_bfloat16*>(bytes.data())[i] =
            __float2bfloat16_rn(static_cast<float>(v[i]));
        break;
    }
  }
  check_cuda(cudaMemcpy(out.data<void>(), bytes.data(), out.bytes(), cudaMemcpyHostToDevice),
             "upload");
  return out;
}

static Vec download(const Tensor& t) {
  check_cuda(cudaDeviceSynchronize(), "kernel");
  std::vector<unsigned char> bytes(t.bytes());
  check_cuda(cudaMemcpy(bytes.data(), t.data<void>(), t.bytes(), cudaMemcpyDeviceToHost), "download");
  Vec v(t.numel());
  for (size_t i = 0; i < v.size(); ++i) {
    switch (t.dtype()) {
      case DataType::FLOAT64: v[i] = reinterpret_cast<double*>(bytes.data())[i]; break;
      case DataType::FLOAT32: v[i] = reinterpret_cast<float*>(bytes.data())[i]; break;
      case DataType::FLOAT16: v[i] = __half2float(reinterpret_cast<__half*>(bytes.data())[i]); break;
      case DataType::BFLOAT16:
        v[i] = __bfloat162float(reinterpret_cast<__nv_bfloat16*>(bytes.data())[i]);
        break;
    }
  }
  return v;
}

static Vec random_values(size_t n, unsigned seed, double scale, DataType t) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = round_to(normal(gen), t);  // exactly what the kernel will read
  return v;
}

// --------------------------------------------------------------------------------- reporting
struct Report {
  FILE* json;
  const char* device;
  int failures = 0;

  // Max |got - want| over max |want|: one number per output, compared with the dtype's bound.
  void compare(const std::string& op, const std::string& dtype, const std::string& what,
               const Vec& got, const Vec& want, double tolerance) {
    double err = 0, scale = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      // std::max drops a NaN, so a non-finite output is counted as an infinite error explicitly
      const double d = std::fabs(got[i] - want[i]);
      err = std::isfinite(d) ? std::max(err, d) : INFINITY;
      scale = std::max(scale, std::fabs(want[i]));
    }
    const double rel = err / (scale > 0 ? scale : 1.0);
    const bool ok = rel <= tolerance && std::isfinite(rel);
    failures += !ok;
    std::printf("%-22s %-9s %-28s max rel err %.2e (bound %.0e) %s\n", op.c_str(), dtype.c_str(),
                what.c_str(), rel, tolerance, ok ? "ok" : "FAIL");
    std::fprintf(json,
                 "{\"kind\": \"accuracy\", \"op\": \"%s\", \"dtype\": \"%s\", \"output\": \"%s\", "
                 "\"max_rel_err\": %.3e, \"bound\": %.0e, \"ok\": %s, \"device\": \"%s\"}\n",
                 op.c_str(), dtype.c_str(), what.c_str(), rel, tolerance, ok ? "true" : "false",
                 device);
  }

  void timing(const std::string& op, const std::string& dtype, const std::string& shape,
              double ms, double bytes, double copy_gbs) {
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("%-22s %-9s %-28s %8.3f ms %7.0f GB/s = %.2f of cudaMemcpy's %.0f GB/s\n",
                op.c_str(), dtype.c_str(), shape.c_str(), ms, gbs, gbs / copy_gbs, copy_gbs);
    std::fprintf(json,
                 "{\"kind\": \"timing\", \"op\": \"%s\", \"dtype\": \"%s\", \"shape\": \"%s\", "
                 "\"median_ms\": %.4f, \"gb_per_s\": %.1f, \"memcpy_gb_per_s\": %.1f, "
                 "\"fraction_of_memcpy\": %.3f, \"device\": \"%s\"}\n",
                 op.c_str(), dtype.c_str(), shape.c_str(), ms, gbs, copy_gbs, gbs / copy_gbs,
                 device);
  }
};

static double median_ms(const std::function<void()>& launch, int reps = 25) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  launch();  // warm-up
  check_cuda(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> times;
  for (int r = 0; r < reps; ++r) {
    cudaEventRecord(a);
    launch();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    times.push_back(ms);
  }
  check_cuda(cudaGetLastError(), "timed launches");
  std::sort(times.begin(), times.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return times[times.size() / 2];
}

static double memcpy_gbs() {
  const size_t bytes = size_t(1) << 30;
  Tensor src({int64_t(bytes / 4)}, DataType::FLOAT32), dst({int64_t(bytes / 4)}, DataType::FLOAT32);
  const double ms = median_ms([&] {
    cudaMemcpy(dst.data<void>(), src.data<void>(), bytes, cudaMemcpyDeviceToDevice);
  });
  return 2.0 * bytes / (ms * 1e-3) / 1e9;  // read + write
}

// --------------------------------------------------------------------------- the references
static void rms_norm_ref(const Vec& x, const Vec& w, const Vec& g, int64_t rows, int64_t h,
                         double eps, Vec& out, Vec& inv, Vec& dx, Vec& dw) {
  out.assign(rows * h, 0);
  inv.assign(rows, 0);
  dx.assign(rows * h, 0);
  dw.assign(h, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = &x[r * h];
    const double* gr = &g[r * h];
    double ss = 0, dot = 0;
    for (int64_t i = 0; i < h; ++i) ss += xr[i] * xr[i];
    const double iv = 1.0 / std::sqrt(ss / h + eps);
    inv[r] = iv;
    for (int64_t i = 0; i < h; ++i) dot += gr[i] * w[i] * xr[i];
    for (int64_t i = 0; i < h; ++i) {
      out[r * h + i] = xr[i] * iv * w[i];
      // d/dx_i of x_i * iv * w_i, with iv depending on every x_j
      dx[r * h + i] = iv * gr[i] * w[i] - xr[i] * iv * iv * iv * dot / h;
      dw[i] += gr[i] * xr[i] * iv;
    }
  }
}

// out = x * cos + rotate_half(x) * sin (sign +1) or the transpose (sign -1); table row per position
// (or per batch*seq row when per_batch).
static Vec rope_ref(const Vec& x, const Vec& cos, const Vec& sin, int64_t b, int64_t s, int64_t heads,
                    int64_t d, bool per_batch, int sign) {
  Vec out(x.size());
  const int64_t half = d / 2;
  for (int64_t row = 0; row < b * s; ++row) {
    const int64_t t = (per_batch ? row : row % s) * d;
    for (int64_t hh = 0; hh < heads; ++hh) {
      const int64_t base = (row * heads + hh) * d;
      for (int64_t i = 0; i < half; ++i) {
        const double x1 = x[base + i], x2 = x[base + i + half];
        if (sign > 0) {  // rotate_half([x1, x2]) = [-x2, x1]
          out[base + i] = x1 * cos[t + i] - x2 * sin[t + i];
          out[base + i + half] = x2 * cos[t + i + half] + x1 * sin[t + i + half];
        } else {  // its transpose: [x2, -x1] weighted by the partner's sin
          out[base + i] = x1 * cos[t + i] + x2 * sin[t + i + half];
          out[base + i + half] = x2 * cos[t + i + half] - x1 * sin[t + i];
        }
      }
    }
  }
  return out;
}

static double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// --------------------------------------------------------------------------------- the checks
struct DType {
  DataType type;
  const char* name;
  double tolerance;  // max relative error of an output stored in this dtype
};

static const DType kDtypes[] = {
    {DataType::FLOAT64, "float64", 1e-12},
    {DataType::FLOAT32, "float32", 2e-5},
    {DataType::FLOAT16, "float16", 3e-3},
    {DataType::BFLOAT16, "bfloat16", 2e-2},
};

static void check_rms_norm(Report& rep, const DType& dt, int64_t rows, int64_t h, unsigned seed) {
  const double eps = 1e-6;
  Vec x = random_values(rows * h, seed, 1.0, dt.type);
  Vec w = random_values(h, seed + 1, 1.0, dt.type);
  Vec g = random_values(rows * h, seed + 2, 1.0, dt.type);
  Tensor tx = upload({rows, h}, x, dt.type), tw = upload({h}, w, dt.type);
  Tensor tg = upload({rows, h}, g, dt.type);
  const DataType acc = dt.type == DataType::FLOAT64 ? DataType::FLOAT64 : DataType::FLOAT32;
  Tensor out({rows, h}, dt.type), inv({rows}, acc), dx({rows, h}, dt.type), dw({h}, dt.type);
  k::rms_norm_forward(tx, tw, static_cast<float>(eps), out, inv);
  // dw starts as NaN, so a kernel that leaves it unwritten (e.g. for zero rows) fails below.
  cudaMemset(dw.data<void>(), 0xFF, dw.bytes());
  // The backward reads the forward's inv_rms, as the op does.
  k::rms_norm_backward(tx, tw, inv, tg, dx, dw);
  Vec r_out, r_inv, r_dx, r_dw;
  rms_norm_ref(x, w, g, rows, h, static_cast<float>(eps), r_out, r_inv, r_dx, r_dw);
  const std::string shape = "rows " + std::to_string(rows) + ", h " + std::to_string(h);
  // inv_rms is kept in float even for 16-bit inputs
  const double acc_tol = dt.type == DataType::FLOAT64 ? 1e-12 : 2e-6;
  rep.compare("rms_norm " + shape, dt.name, "out", download(out), r_out, dt.tolerance);
  rep.compare("rms_norm " + shape, dt.name, "inv_rms", download(inv), r_inv, acc_tol);
  rep.compare("rms_norm " + shape, dt.name, "grad x", download(dx), r_dx, dt.tolerance);
  rep.compare("rms_norm " + shape, dt.name, "grad weight", download(dw), r_dw, dt.tolerance);
}

static void check_rope(Report& rep, const DType& dt, int64_t b, int64_t s, int64_t heads, int64_t d,
                       bool per_batch, unsigned seed) {
  const int64_t table_rows = per_batch ? b * s : s;
  Vec x = random_values(b * s * heads * d, seed, 1.0, dt.type);
  Vec cos(table_rows * d), sin(table_rows * d);
  for (int64_t r = 0; r < table_rows; ++r)
    for (int64_t i = 0; i < d; ++i) {  // LLaMA's tables: angle = pos * theta^(-2(i mod d/2)/d)
      const double pos = per_batch ? (r * 7) % 4096 : r;  // per-sample positions, out of order
      const double angle = pos * std::pow(10000.0, -2.0 * (i % (d / 2)) / d);
      cos[r * d + i] = round_to(std::cos(angle), dt.type);
      sin[r * d + i] = round_to(std::sin(angle), dt.type);
    }
  Tensor tx = upload({b, s, heads, d}, x, dt.type);
  Tensor tc = upload({table_rows, d}, cos, dt.type), ts = upload({table_rows, d}, sin, dt.type);
  const std::string shape = std::string(per_batch ? "rope per-sample " : "rope ") + std::to_string(s) +
                            "x" + std::to_string(heads) + "x" + std::to_string(d);
  for (int sign : {1, -1}) {
    Tensor out({b, s, heads, d}, dt.type);
    k::rope_apply(tx, tc, ts, s, per_batch, sign, out);
    rep.compare(shape, dt.name, sign > 0 ? "forward" : "backward (transpose)", download(out),
                rope_ref(x, cos, sin, b, s, heads, d, per_batch, sign), dt.tolerance);
  }
}

static void check_swiglu(Report& rep, const DType& dt, int64_t rows, int64_t inner, bool packed,
                         unsigned seed) {
  const int64_t stride = packed ? 2 * inner : inner;
  Vec gate = random_values(rows * stride, seed, 2.0, dt.type);
  Vec up = packed ? gate : random_values(rows * inner, seed + 1, 1.0, dt.type);
  Vec go = random_values(rows * inner, seed + 2, 1.0, dt.type);
  Vec r_out(rows * inner), r_dg(rows * stride, 0), r_du(rows * stride, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < inner; ++i) {
      const double g = gate[r * stride + i];
      const double u = packed ? gate[r * stride + inner + i] : up[r * inner + i];
      const double o = go[r * inner + i], sg = sigmoid(g);
      r_out[r * inner + i] = g * sg * u;
      r_dg[r * stride + i] = o * u * (sg + g * sg * (1 - sg));  // d silu(g)/dg = s + g s (1-s)
      (packed ? r_dg[r * stride + inner + i] : r_du[r * inner + i]) = o * g * sg;
    }
  const std::string shape = std::string(packed ? "swiglu packed " : "swiglu ") +
                            std::to_string(rows) + "x" + std::to_string(inner);
  Tensor tg = upload({rows, stride}, gate, dt.type);
  Tensor tu = packed ? tg : upload({rows, inner}, up, dt.type);
  Tensor tgo = upload({rows, inner}, go, dt.type), out({rows, inner}, dt.type);
  k::swiglu_forward(tg, tu, rows, inner, stride, out);
  rep.compare(shape, dt.name, "out", download(out), r_out, dt.tolerance);
  if (packed) {  // one gradient tensor [gate grad | up grad], as fused_swiglu_packed passes it
    Tensor dx({rows, stride}, dt.type);
    k::swiglu_backward(tg, tg, tgo, rows, inner, stride, dx, dx);
    rep.compare(shape, dt.name, "grad x", download(dx), r_dg, dt.tolerance);
  } else {
    Tensor dg({rows, inner}, dt.type), du({rows, inner}, dt.type);
    k::swiglu_backward(tg, tu, tgo, rows, inner, stride, dg, du);
    rep.compare(shape, dt.name, "grad gate", download(dg), r_dg, dt.tolerance);
    rep.compare(shape, dt.name, "grad up", download(du), r_du, dt.tolerance);
  }
}

static void time_kernels(Report& rep, const DType& dt, double copy_gbs) {
  const double e = static_cast<double>(paddle::size_of(dt.type));
  {  // RMSNorm: 8192 tokens x hidden 4096
    const int64_t rows = 8192, h = 4096;
    Tensor x({rows, h}, dt.type), w({h}, dt.type), g({rows, h}, dt.type), out({rows, h}, dt.type);
    Tensor inv({rows}, DataType::FLOAT32), dx({rows, h}, dt.type), dw({h}, dt.type);
    cudaMemset(x.data<void>(), 0, x.bytes());
    cudaMemset(w.data<void>(), 0, w.bytes());
    cudaMemset(g.data<void>(), 0, g.bytes());
    const double n = double(rows) * h;
    rep.timing("rms_norm forward", dt.name, "8192x4096",
               median_ms([&] { k::rms_norm_forward(x, w, 1e-6f, out, inv); }), 2 * n * e, copy_gbs);
    rep.timing("rms_norm backward", dt.name, "8192x4096",
               median_ms([&] { k::rms_norm_backward(x, w, inv, g, dx, dw); }), 3 * n * e, copy_gbs);
  }
  {  // RoPE: batch 4 x seq 2048 x 32 heads x head_dim 128
    const int64_t b = 4, s = 2048, heads = 32, d = 128;
    Tensor x({b, s, heads, d}, dt.type), out({b, s, heads, d}, dt.type);
    Tensor c({s, d}, dt.type), sn({s, d}, dt.type);
    cudaMemset(x.data<void>(), 0, x.bytes());
    const double n = double(b) * s * heads * d;
    rep.timing("rope forward", dt.name, "4x2048x32x128",
               median_ms([&] { k::rope_apply(x, c, sn, s, false, 1, out); }), 2 * n * e, copy_gbs);
  }
  {  // SwiGLU: 8192 tokens x intermediate 11008
    const int64_t rows = 8192, inner = 11008;
    Tensor gate({rows, inner}, dt.type), up({rows, inner}, dt.type), go({rows, inner}, dt.type);
    Tensor out({rows, inner}, dt.type), dg({rows, inner}, dt.type), du({rows, inner}, dt.type);
    cudaMemset(gate.data<void>(), 0, gate.bytes());
    cudaMemset(up.data<void>(), 0, up.bytes());
    cudaMemset(go.data<void>(), 0, go.bytes());
    const double n = double(rows) * inner;
    rep.timing("swiglu forward", dt.name, "8192x11008",
               median_ms([&] { k::swiglu_forward(gate, up, rows, inner, inner, out); }), 3 * n * e,
               copy_gbs);
    rep.timing("swiglu backward", dt.name, "8192x11008",
               median_ms([&] { k::swiglu_backward(gate, up, go, rows, inner, inner, dg, du); }),
               5 * n * e, copy_gbs);
  }
}

int main(int argc, char** argv) {
  cudaDeviceProp prop;
  check_cuda(cudaGetDeviceProperties(&prop, 0), "device");
  FILE* json = std::fopen(argc > 1 ? argv[1] : "cuda_check.jsonl", "w");
  Report rep{json, prop.name};
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  unsigned seed = 1;
  for (const DType& dt : kDtypes) {
    check_rms_norm(rep, dt, 512, 4096, seed += 10);
    check_rms_norm(rep, dt, 37, 1000, seed += 10);  // h not a multiple of the block, few rows
    check_rms_norm(rep, dt, 3000, 64, seed += 10);  // rows > the backward's 1024 partial slots
    check_rms_norm(rep, dt, 0, 64, seed += 10);     // no rows: no launch, grad weight all zeros
    check_rope(rep, dt, 2, 64, 8, 128, false, seed += 10);
    check_rope(rep, dt, 3, 17, 4, 64, true, seed += 10);
    check_swiglu(rep, dt, 256, 1376, false, seed += 10);
    check_swiglu(rep, dt, 33, 344, true, seed += 10);
  }
  // "accuracy-only": under compute-sanitizer, which makes the large timed launches too slow.
  if (!(argc > 2 && std::string(argv[2]) == "accuracy-only")) {
    const double copy_gbs = memcpy_gbs();
    for (const DType& dt : kDtypes)
      if (dt.type != DataType::FLOAT64) time_kernels(rep, dt, copy_gbs);
  }
  std::fclose(json);
  std::printf("%s: %d output(s) outside tolerance\n", rep.failures ? "FAILED" : "passed",
              rep.failures);
  return rep.failures ? 1 : 0;
}
