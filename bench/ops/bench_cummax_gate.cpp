// cummax_gate: the fused kernel (GateImpl::kFused) against the composite of ATen ops
// (GateImpl::kComposite, torch.cummax plus the elementwise formula), both timed in the same run, on
// the CPU or on one GPU.
//   bench_cummax_gate [--device=cpu|cuda] [--dtype=fp32,bf16] [--shapes=BxTxd,...] [--reps=20]
//                     [--warmup=3] [--threads=0] [--json=FILE]
//
// For each (B, T, d) (and, on CUDA, each dtype), three measurements per implementation, each the
// median of --reps runs after --warmup runs:
//   fwd infer  forward under NoGradGuard (generation: no saved running max, no autograd node)
//   fwd train  forward with y and alphas requiring grad (what the training step pays)
//   fwd+bwd    forward, then torch::autograd::grad for dL/dy and dL/dalphas given a fixed dL/dout
// and prints composite/fused. Before timing, outputs and gradients of both are compared with the
// composite in fp64 on the same inputs (the composite is the reference, docs/model.md "The fused
// operation"); a mismatch exits 1.
//
// --device=cpu (default): fp32 only, wall-clock times; default shapes 8x256x512,1x4096x512.
// --device=cuda: fp32 and bf16 (--dtype), default shapes 32x1024x512,4x16384x512. Each run is timed
// between two CUDA events on the current stream (at::cuda::CUDAEvent). A device-to-device copy of a
// tensor the size of y (dst.copy_(src)) is timed the same way in the same run, and every
// measurement is also given as GB/s of the bytes the op must move, and as a fraction of the copy's
// GB/s (copy bytes: read + write). The bytes are those the fused kernels move, per token in
// elements: the forward reads y (3d) and writes out (d), and reads c (d) once more for the chunk
// summaries when it cuts T into K > 1 chunks: 4d or 5d, training or not (only per-chunk carries are
// saved); the backward reads dL/dout (d) and y (3d) and writes dL/dy (3d): 7d more. Left out: the
// (B, d) state and the per-chunk carries and records, (B, K, d) each.
// Without a GPU, --device=cuda prints "bench_cummax_gate: no CUDA device" and exits 2.
//
// --json=FILE writes every figure (times, bytes, GB/s, ratios, the check's errors) as one JSON
// object, rewritten after each shape so that a run cut short keeps what it measured.
#include <ATen/Parallel.h>
#include <gflags/gflags.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "samout/common/strings.h"
#include "samout/ops/cummax_gate.h"

#ifdef SAMOUT_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

DEFINE_string(device, "cpu", "cpu | cuda");
DEFINE_string(dtype, "",
              "Comma-separated dtypes, fp32 and/or bf16 (bf16 on CUDA only); "
              "default fp32 on the CPU, fp32,bf16 on CUDA");
DEFINE_string(shapes, "",
              "Comma-separated BxTxd shapes; default 8x256x512,1x4096x512 on the CPU, "
              "32x1024x512,4x16384x512 on CUDA");
DEFINE_int32(reps, 20, "Timed repetitions per measurement (the median is reported)");
DEFINE_int32(warmup, 3, "Untimed repetitions before each measurement");
DEFINE_int32(threads, 0, "Intra-op threads (at::set_num_threads); 0 keeps ATen's default");
DEFINE_double(rtol, 1e-6, "Check: error allowed relative to the largest fp64 value");
DEFINE_double(atol, 1e-6, "Check: absolute error allowed");
DEFINE_double(alpha_rtol, 1e-4,
              "Check: relative error allowed in dL/dalphas (fp32 sums of B*T*d terms)");
DEFINE_double(bf16_rtol, 1e-2, "Check, bf16: relative error allowed in every output (2.6 bits)");
DEFINE_string(json, "", "Also write every figure to this JSON file");

namespace {

using samout::ops::GateImpl;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "bench_cummax_gate: %s\n", msg.c_str());
  std::exit(2);
}

struct Shape {
  int64_t B, T, d;
};

std::vector<Shape> parse_shapes(const std::string& spec) {
  std::vector<Shape> shapes;
  for (const std::string& item : samout::split_list(spec)) {
    Shape s{};
    if (std::sscanf(item.c_str(), "%ldx%ldx%ld", &s.B, &s.T, &s.d) != 3 || s.B <= 0 || s.T <= 0 ||
        s.d <= 0) {
      usage_error("bad shape '" + item + "' (expected BxTxd)");
    }
    shapes.push_back(s);
  }
  return shapes;
}

std::vector<torch::ScalarType> parse_dtypes(const std::string& spec, bool cuda) {
  std::vector<torch::ScalarType> dtypes;
  for (const std::string& item : samout::split_list(spec)) {
    if (item == "fp32") {
      dtypes.push_back(torch::kFloat);
    } else if (item == "bf16" && cuda) {
      dtypes.push_back(torch::kBFloat16);
    } else {
      usage_error("bad --dtype '" + item + "' (fp32" + (cuda ? " or bf16)" : " on the CPU)"));
    }
  }
  if (dtypes.empty()) usage_error("--dtype names no dtype");
  return dtypes;
}

const char* dtype_name(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp32"; }

std::string shape_name(const Shape& s) {
  return std::to_string(s.B) + "x" + std::to_string(s.T) + "x" + std::to_string(s.d);
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// Median wall time of fn() in milliseconds (CPU).
double median_ms(const std::function<void()>& fn) {
  for (int i = 0; i < FLAGS_warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < FLAGS_reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return median(ms);
}

#ifdef SAMOUT_HAVE_CUDA
// Median GPU time of fn() in milliseconds: each run between two timing events recorded on the
// current stream, all runs queued back to back, one synchronisation at the end.
double median_cuda_ms(const std::function<void()>& fn) {
  for (int i = 0; i < FLAGS_warmup; ++i) fn();
  const auto stream = at::cuda::getCurrentCUDAStream();
  std::vector<at::cuda::CUDAEvent> start, stop;
  start.reserve(FLAGS_reps);
  stop.reserve(FLAGS_reps);
  for (int i = 0; i < FLAGS_reps; ++i) {
    start.emplace_back(cudaEventDefault);  // timing enabled (the default flags disable it)
    stop.emplace_back(cudaEventDefault);
  }
  for (int i = 0; i < FLAGS_reps; ++i) {
    start[i].record(stream);
    fn();
    stop[i].record(stream);
  }
  stop.back().synchronize();  // the stream runs in order: every event before it is done too
  std::vector<double> ms;
  for (int i = 0; i < FLAGS_reps; ++i) ms.push_back(start[i].elapsed_time(stop[i]));
  return median(ms);
}
#endif

struct Inputs {
  torch::Tensor y;       // (B, T, 3d), requires grad
  torch::Tensor alphas;  // (5,), requires grad
  torch::Tensor g;       // (B, T, d): the fixed upstream gradient dL/dout
};

Inputs make_inputs(const Shape& s, torch::TensorOptions opts) {
  torch::manual_seed(0);
  Inputs in;
  // Drawn in fp32 on the CPU whatever the device, so both devices time the same numbers.
  in.y = torch::randn({s.B, s.T, 3 * s.d}).to(opts).requires_grad_(true);
  in.alphas = (0.5 + 0.1 * torch::randn({5})).to(opts).requires_grad_(true);
  in.g = torch::randn({s.B, s.T, s.d}).to(opts);
  return in;
}

std::vector<torch::Tensor> fwd_bwd(const Inputs& in, GateImpl impl) {
  auto r = samout::ops::cummax_gate(in.y, in.alphas, {}, impl);
  return torch::autograd::grad({r.out}, {in.y, in.alphas}, {in.g});
}

struct Tolerance {
  double rtol, atol, alpha_rtol;
};

// Compares fused and composite (in the inputs' dtype and on their device) with the composite run in
// fp64 on the same values, the ground truth: out, state, dL/dy, dL/dalphas. dL/dc sums
// g*(a+b+c+...) over every later position whose maximum sits at t, and dL/dalphas sums B*T*d
// terms, so results in the working precision differ from each other by rounding that grows with
// T; the fused kernel passes when its error against fp64 is within 2x the composite's own, or
// below rtol (alpha_rtol for dL/dalphas) of the largest fp64 value plus atol. The states (a running
// max: no rounding) must be equal. Fills `out` with the errors.
bool check(const Shape& s, const Inputs& in, const Tolerance& tol, json& out) {
  auto rf = samout::ops::cummax_gate(in.y, in.alphas, {}, GateImpl::kFused);
  auto rc = samout::ops::cummax_gate(in.y, in.alphas, {}, GateImpl::kComposite);
  auto gf = torch::autograd::grad({rf.out}, {in.y, in.alphas}, {in.g});
  auto gc = torch::autograd::grad({rc.out}, {in.y, in.alphas}, {in.g});
  auto y64 = in.y.detach().to(torch::kDouble).requires_grad_(true);
  auto al64 = in.alphas.detach().to(torch::kDouble).requires_grad_(true);
  auto r64 = samout::ops::cummax_gate(y64, al64, {}, GateImpl::kComposite);
  auto g64 = torch::autograd::grad({r64.out}, {y64, al64}, {in.g.to(torch::kDouble)});

  bool ok = torch::equal(rf.state, rc.state);
  out["state_equal"] = ok;
  std::printf("check %ldx%ldx%ld %s: state %s; max|err| vs fp64 composite (fused, composite %s):",
              s.B, s.T, s.d, dtype_name(in.y.scalar_type()), ok ? "equal" : "DIFFERS",
              dtype_name(in.y.scalar_type()));
  const char* names[3] = {"out", "dL/dy", "dL/dalphas"};
  const torch::Tensor fused[3] = {rf.out, gf[0], gf[1]};
  const torch::Tensor comp[3] = {rc.out, gc[0], gc[1]};
  const torch::Tensor ref[3] = {r64.out, g64[0], g64[1]};
  for (int k = 0; k < 3; ++k) {
    const double ef = (fused[k].to(torch::kDouble) - ref[k]).abs().max().item<double>();
    const double ec = (comp[k].to(torch::kDouble) - ref[k]).abs().max().item<double>();
    const double scale = ref[k].abs().max().item<double>();
    const double rtol = k == 2 ? tol.alpha_rtol : tol.rtol;
    const bool good = ef <= std::max(2 * ec, rtol * scale + tol.atol);
    ok = ok && good;
    out[names[k]] = {{"fused_err", ef}, {"composite_err", ec}, {"max_abs", scale}, {"ok", good}};
    std::printf(" %s %.2e, %.2e (max %.2e) %s;", names[k], ef, ec, scale, good ? "ok" : "FAIL");
  }
  std::printf("\n");
  out["ok"] = ok;
  return ok;
}

// The three measurements, in table order.
const char* const kWhat[3] = {"fwd infer", "fwd train", "fwd+bwd"};
const char* const kWhatKey[3] = {"fwd_infer", "fwd_train", "fwd_bwd"};

void write_json(const json& doc) {
  if (FLAGS_json.empty()) return;
  std::ofstream f(FLAGS_json);
  f << doc.dump(2) << "\n";
  if (!f) usage_error("cannot write --json file " + FLAGS_json);
}

// ---- CPU ----------------------------------------------------------------------------------------

void row(const char* what, double composite_ms, double fused_ms) {
  std::printf("  %-10s composite %9.3f ms   fused %9.3f ms   composite/fused %6.2fx\n", what,
              composite_ms, fused_ms, composite_ms / fused_ms);
}

int run_cpu(json& doc) {
  if (FLAGS_threads > 0) at::set_num_threads(FLAGS_threads);
  parse_dtypes(FLAGS_dtype.empty() ? "fp32" : FLAGS_dtype, /*cuda=*/false);  // fp32 only
  std::printf(
      "bench_cummax_gate: fp32 CPU, %d intra-op threads, median of %d reps after %d warmup\n",
      at::get_num_threads(), FLAGS_reps, FLAGS_warmup);
  doc["threads"] = at::get_num_threads();
  const Tolerance tol{FLAGS_rtol, FLAGS_atol, FLAGS_alpha_rtol};

  bool all_ok = true;
  for (const Shape& s :
       parse_shapes(FLAGS_shapes.empty() ? "8x256x512,1x4096x512" : FLAGS_shapes)) {
    const Inputs in = make_inputs(s, torch::TensorOptions().dtype(torch::kFloat));
    json res = {{"shape", {s.B, s.T, s.d}}, {"dtype", "fp32"}};
    all_ok = check(s, in, tol, res["check"]) && all_ok;

    double t[2][3];  // [composite, fused][infer, train, fwd+bwd]
    const GateImpl impls[2] = {GateImpl::kComposite, GateImpl::kFused};
    for (int i = 0; i < 2; ++i) {
      const GateImpl impl = impls[i];
      t[i][0] = median_ms([&] {
        torch::NoGradGuard no_grad;
        auto r = samout::ops::cummax_gate(in.y, in.alphas, {}, impl);
      });
      t[i][1] = median_ms([&] { auto r = samout::ops::cummax_gate(in.y, in.alphas, {}, impl); });
      t[i][2] = median_ms([&] { auto g = fwd_bwd(in, impl); });
    }
    std::printf("(B, T, d) = (%ld, %ld, %ld)\n", s.B, s.T, s.d);
    for (int k = 0; k < 3; ++k) {
      row(kWhat[k], t[0][k], t[1][k]);
      res["measurements"].push_back({{"what", kWhatKey[k]},
                                     {"composite_ms", t[0][k]},
                                     {"fused_ms", t[1][k]},
                                     {"composite_over_fused", t[0][k] / t[1][k]}});
    }
    // The backward alone, by difference: what the fused backward kernel costs.
    row("bwd (diff)", t[0][2] - t[0][1], t[1][2] - t[1][1]);
    res["measurements"].push_back(
        {{"what", "bwd_diff"},
         {"composite_ms", t[0][2] - t[0][1]},
         {"fused_ms", t[1][2] - t[1][1]},
         {"composite_over_fused", (t[0][2] - t[0][1]) / (t[1][2] - t[1][1])}});
    doc["results"].push_back(res);
    doc["check_ok"] = all_ok;
    write_json(doc);
  }
  if (!all_ok) {
    std::printf("bench_cummax_gate: fused and composite DISAGREE\n");
    return 1;
  }
  return 0;
}

// ---- CUDA ---------------------------------------------------------------------------------------

#ifdef SAMOUT_HAVE_CUDA
// Elements each measurement moves per token, as multiples of d, for a forward of K chunks (see the
// header): infer, train, fwd+bwd.
std::array<int64_t, 3> elems_per_token_per_d(int64_t K) {
  const int64_t forward = K > 1 ? 5 : 4;
  return {forward, forward, forward + 7};
}

int run_cuda(json& doc) {
  const auto dtypes = parse_dtypes(FLAGS_dtype.empty() ? "fp32,bf16" : FLAGS_dtype, /*cuda=*/true);
  const auto shapes = parse_shapes(FLAGS_shapes.empty() ? "32x1024x512,4x16384x512" : FLAGS_shapes);
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  std::printf("bench_cummax_gate: CUDA, %s, median of %d reps after %d warmup (CUDA events)\n",
              prop->name, FLAGS_reps, FLAGS_warmup);
  doc["device_name"] = prop->name;

  bool all_ok = true;
  for (const Shape& s : shapes) {
    for (torch::ScalarType dtype : dtypes) {
      const auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
      const Inputs in = make_inputs(s, opts);
      const Tolerance tol = dtype == torch::kBFloat16
                                ? Tolerance{FLAGS_bf16_rtol, FLAGS_atol, FLAGS_bf16_rtol}
                                : Tolerance{FLAGS_rtol, FLAGS_atol, FLAGS_alpha_rtol};
      json res = {{"shape", {s.B, s.T, s.d}}, {"dtype", dtype_name(dtype)}};
      all_ok = check(s, in, tol, res["check"]) && all_ok;

      const double elem = static_cast<double>(c10::elementSize(dtype));
      const double tokens = static_cast<double>(s.B * s.T);
      // The baseline: a device-to-device copy of y's size (bytes read + written).
      auto src = torch::randn({s.B, s.T, 3 * s.d}, opts), dst = torch::empty_like(src);
      const double copy_ms = median_cuda_ms([&] { dst.copy_(src); });
      const double copy_bytes = 2.0 * src.numel() * elem;
      const double copy_gbs = copy_bytes / (copy_ms * 1e6);
      res["copy"] = {{"ms", copy_ms}, {"bytes", copy_bytes}, {"gb_s", copy_gbs}};

      double t[2][3];  // [composite, fused][infer, train, fwd+bwd]
      const GateImpl impls[2] = {GateImpl::kComposite, GateImpl::kFused};
      for (int i = 0; i < 2; ++i) {
        const GateImpl impl = impls[i];
        t[i][0] = median_cuda_ms([&] {
          torch::NoGradGuard no_grad;
          auto r = samout::ops::cummax_gate(in.y, in.alphas, {}, impl);
        });
        t[i][1] =
            median_cuda_ms([&] { auto r = samout::ops::cummax_gate(in.y, in.alphas, {}, impl); });
        t[i][2] = median_cuda_ms([&] { auto g = fwd_bwd(in, impl); });
      }

      std::printf(
          "(B, T, d) = (%ld, %ld, %ld) %s: copy %.3f ms, %.1f GB/s (d2d, y's size, read + write)\n",
          s.B, s.T, s.d, dtype_name(dtype), copy_ms, copy_gbs);
      std::printf("  %-10s %12s %8s %7s   %12s %8s %7s   %15s\n", "", "composite ms", "GB/s",
                  "of copy", "fused ms", "GB/s", "of copy", "composite/fused");
      const int64_t K = samout::ops::cummax_gate_cuda_chunks(in.y);
      res["chunks"] = K;
      const auto elems = elems_per_token_per_d(K);
      for (int k = 0; k < 3; ++k) {
        const double bytes = elems[k] * s.d * tokens * elem;
        json m = {
            {"what", kWhatKey[k]}, {"bytes", bytes}, {"composite_over_fused", t[0][k] / t[1][k]}};
        double gbs[2];
        for (int i = 0; i < 2; ++i) {
          gbs[i] = bytes / (t[i][k] * 1e6);
          m[i == 0 ? "composite" : "fused"] = {
              {"ms", t[i][k]}, {"gb_s", gbs[i]}, {"fraction_of_copy", gbs[i] / copy_gbs}};
        }
        std::printf("  %-10s %12.3f %8.1f %7.2f   %12.3f %8.1f %7.2f   %14.2fx\n", kWhat[k],
                    t[0][k], gbs[0], gbs[0] / copy_gbs, t[1][k], gbs[1], gbs[1] / copy_gbs,
                    t[0][k] / t[1][k]);
        res["measurements"].push_back(m);
      }
      doc["results"].push_back(res);
      doc["check_ok"] = all_ok;
      write_json(doc);
    }
  }
  if (!all_ok) {
    std::printf("bench_cummax_gate: fused and composite DISAGREE\n");
    return 1;
  }
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("cummax_gate benchmark: fused kernel vs composite ATen ops, CPU or CUDA");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (FLAGS_device != "cpu" && FLAGS_device != "cuda")
    usage_error("bad --device '" + FLAGS_device + "' (expected cpu or cuda)");
  if (FLAGS_reps < 1 || FLAGS_warmup < 0) usage_error("--reps must be >= 1 and --warmup >= 0");
  json doc = {{"benchmark", "bench_cummax_gate"},
              {"device", FLAGS_device},
              {"reps", FLAGS_reps},
              {"warmup", FLAGS_warmup},
              {"results", json::array()}};
  if (FLAGS_device == "cuda") {
    if (!torch::cuda::is_available()) usage_error("no CUDA device");
    if (!samout::ops::cuda_kernels_compiled()) usage_error("this build has no CUDA kernels");
  }
  write_json(doc);  // a bad --json path fails now, not after the first shape
  if (FLAGS_device == "cpu") return run_cpu(doc);
#ifdef SAMOUT_HAVE_CUDA
  return run_cuda(doc);
#else
  return 2;  // unreachable: cuda_kernels_compiled() is false without SAMOUT_HAVE_CUDA
#endif
}
