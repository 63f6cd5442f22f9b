// cummax_gate on the CPU: the fused kernel (GateImpl::kFused) against the composite of ATen ops
// (GateImpl::kComposite, torch.cummax plus the elementwise formula), both timed in the same run.
//   bench_cummax_gate [--shapes=8x256x512,1x4096x512] [--reps=20] [--warmup=3] [--threads=0]
//
// For each (B, T, d), fp32, three measurements per implementation, each the median of --reps runs
// after --warmup runs:
//   fwd infer  forward under NoGradGuard (generation: no saved running max, no autograd node)
//   fwd train  forward with y and alphas requiring grad (what the training step pays)
//   fwd+bwd    forward, then torch::autograd::grad for dL/dy and dL/dalphas given a fixed dL/dout
// and prints composite/fused. Before timing, outputs and gradients of both are compared with the composite in
// fp64 (the composite is the reference, SPEC.md "The fused operation"); a mismatch exits 1.
#include <ATen/Parallel.h>
#include <gflags/gflags.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "samout/ops/cummax_gate.h"

DEFINE_string(shapes, "8x256x512,1x4096x512", "Comma-separated BxTxd shapes");
DEFINE_int32(reps, 20, "Timed repetitions per measurement (the median is reported)");
DEFINE_int32(warmup, 3, "Untimed repetitions before each measurement");
DEFINE_int32(threads, 0, "Intra-op threads (at::set_num_threads); 0 keeps ATen's default");
DEFINE_double(rtol, 1e-6, "Check: error allowed relative to the largest fp64 value");
DEFINE_double(atol, 1e-6, "Check: absolute error allowed");
DEFINE_double(alpha_rtol, 1e-4, "Check: relative error allowed in dL/dalphas (fp32 sums of B*T*d terms)");

namespace {

using samout::ops::GateImpl;
using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t B, T, d;
};

std::vector<Shape> parse_shapes(const std::string& spec) {
  std::vector<Shape> shapes;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    Shape s{};
    if (std::sscanf(item.c_str(), "%ldx%ldx%ld", &s.B, &s.T, &s.d) != 3 || s.B <= 0 || s.T <= 0 ||
        s.d <= 0) {
      std::fprintf(stderr, "bench_cummax_gate: bad shape '%s' (expected BxTxd)\n", item.c_str());
      std::exit(2);
    }
    shapes.push_back(s);
  }
  return shapes;
}

// Median wall time of fn() in milliseconds.
double median_ms(const std::function<void()>& fn) {
  for (int i = 0; i < FLAGS_warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < FLAGS_reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

struct Inputs {
  torch::Tensor y;       // (B, T, 3d), requires grad
  torch::Tensor alphas;  // (5,), requires grad
  torch::Tensor g;       // (B, T, d): the fixed upstream gradient dL/dout
};

Inputs make_inputs(const Shape& s) {
  torch::manual_seed(0);
  Inputs in;
  in.y = torch::randn({s.B, s.T, 3 * s.d}).requires_grad_(true);
  in.alphas = (0.5 + 0.1 * torch::randn({5})).requires_grad_(true);
  in.g = torch::randn({s.B, s.T, s.d});
  return in;
}

std::vector<torch::Tensor> fwd_bwd(const Inputs& in, GateImpl impl) {
  auto r = samout::ops::cummax_gate(in.y, in.alphas, {}, impl);
  return torch::autograd::grad({r.out}, {in.y, in.alphas}, {in.g});
}

// Compares fused and composite (fp32) with the composite run in fp64, the ground truth: out, state,
// dL/dy, dL/dalphas. dL/dc sums g*(a+b+c+...) over every later position whose maximum sits at t, and
// dL/dalphas sums B*T*d terms, so fp32 results differ from each other by rounding that grows with
// T; the fused kernel passes when its error against fp64 is within 2x the composite's own, or below
// --rtol (--alpha_rtol for dL/dalphas) of the largest fp64 value. The states (a running max: no
// rounding) must be equal.
bool check(const Shape& s, const Inputs& in) {
  auto rf = samout::ops::cummax_gate(in.y, in.alphas, {}, GateImpl::kFused);
  auto rc = samout::ops::cummax_gate(in.y, in.alphas, {}, GateImpl::kComposite);
  auto gf = torch::autograd::grad({rf.out}, {in.y, in.alphas}, {in.g});
  auto gc = torch::autograd::grad({rc.out}, {in.y, in.alphas}, {in.g});
  auto y64 = in.y.detach().to(torch::kDouble).requires_grad_(true);
  auto al64 = in.alphas.detach().to(torch::kDouble).requires_grad_(true);
  auto r64 = samout::ops::cummax_gate(y64, al64, {}, GateImpl::kComposite);
  auto g64 = torch::autograd::grad({r64.out}, {y64, al64}, {in.g.to(torch::kDouble)});

  bool ok = torch::equal(rf.state, rc.state);
  std::printf("check %ldx%ldx%ld: state %s; max|err| vs fp64 composite (fused, composite fp32):",
              s.B, s.T, s.d, ok ? "equal" : "DIFFERS");
  const char* names[3] = {"out", "dL/dy", "dL/dalphas"};
  const torch::Tensor fused[3] = {rf.out, gf[0], gf[1]};
  const torch::Tensor comp[3] = {rc.out, gc[0], gc[1]};
  const torch::Tensor ref[3] = {r64.out, g64[0], g64[1]};
  for (int k = 0; k < 3; ++k) {
    const double ef = (fused[k].to(torch::kDouble) - ref[k]).abs().max().item<double>();
    const double ec = (comp[k].to(torch::kDouble) - ref[k]).abs().max().item<double>();
    const double scale = ref[k].abs().max().item<double>();
    const double rtol = k == 2 ? FLAGS_alpha_rtol : FLAGS_rtol;
    const bool good = ef <= std::max(2 * ec, rtol * scale + FLAGS_atol);
    ok = ok && good;
    std::printf(" %s %.2e, %.2e (max %.2e) %s;", names[k], ef, ec, scale, good ? "ok" : "FAIL");
  }
  std::printf("\n");
  return ok;
}

void row(const char* what, double composite_ms, double fused_ms) {
  std::printf("  %-10s composite %9.3f ms   fused %9.3f ms   composite/fused %6.2fx\n", what,
              composite_ms, fused_ms, composite_ms / fused_ms);
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("cummax_gate CPU benchmark: fused kernel vs composite ATen ops");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (FLAGS_threads > 0) at::set_num_threads(FLAGS_threads);
  std::printf("bench_cummax_gate: fp32 CPU, %d intra-op threads, median of %d reps after %d warmup\n",
              at::get_num_threads(), FLAGS_reps, FLAGS_warmup);

  bool all_ok = true;
  for (const Shape& s : parse_shapes(FLAGS_shapes)) {
    const Inputs in = make_inputs(s);
    all_ok = check(s, in) && all_ok;

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
    row("fwd infer", t[0][0], t[1][0]);
    row("fwd train", t[0][1], t[1][1]);
    row("fwd+bwd", t[0][2], t[1][2]);
    // The backward alone, by difference: what the fused backward kernel costs.
    row("bwd (diff)", t[0][2] - t[0][1], t[1][2] - t[1][1]);
  }
  if (!all_ok) {
    std::printf("bench_cummax_gate: fused and composite DISAGREE\n");
    return 1;
  }
  return 0;
}
