// The fused CUDA kernels of cummax_gate against the fused CPU kernel (GateImpl::kFused on CPU
// tensors, which cummax_gate_test.cpp holds to the composite reference): outputs, carried state,
// dL/dy and dL/dalphas in fp32, bf16 and fp64, with a carried state, a strided y, ties (among c and
// with the state), NaN, and awkward sizes (d not a multiple of 32, T = 1, B*d not a multiple of the
// block size, many blocks, long T). Also: the backward is bitwise reproducible, and neither kernel
// synchronises with the host.
//
// ctest label `gpu`. Without a GPU every test is skipped ("no CUDA device"), which ctest reports as
// skipped, not passed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>

#include "gate_compare.h"
#include "samout/ops/cummax_gate.h"

#ifdef SAMOUT_HAVE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace samout::ops {
namespace {

// Why the CUDA kernels cannot be tested in this process, or nullptr when they can.
const char* why_no_gpu() {
  if (!torch::cuda::is_available()) return "no CUDA device";
  if (!cuda_kernels_compiled()) return "built without CUDA kernels";
  return nullptr;
}

class CummaxGateCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* why = why_no_gpu()) GTEST_SKIP() << why;
  }
};

// ---- Inputs -------------------------------------------------------------------------------------

struct Case {
  int64_t B, T, d;
  bool with_state;  // a carried state on the same coarse grid as c, so c often ties with it
  bool strided;     // y is a view: rows 3d + 7 apart, batches T + 2 rows apart, offset 3
  bool nans;        // NaN in c (then the running max), in a and in b
};

using Param = std::tuple<Case, torch::ScalarType>;

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat:
      return "fp32";
    case torch::kBFloat16:
      return "bf16";
    case torch::kDouble:
      return "fp64";
    default:
      return "other";
  }
}

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B" << c.B << "_T" << c.T << "_d" << c.d << (c.with_state ? "_state" : "")
            << (c.strided ? "_strided" : "") << (c.nans ? "_nan" : "");
}

// The CPU kernel runs in fp64 for fp64 and in fp32 for fp32 and bf16 (on the same bf16 values).
torch::ScalarType reference_dtype(torch::ScalarType t) {
  return t == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// Values on a coarse grid (multiples of 0.5 in [-2, 2], exact in bf16) so the running max ties
// often.
torch::Tensor tie_heavy(torch::IntArrayRef shape, torch::TensorOptions opts) {
  return torch::round(torch::randn(shape, opts) * 2).clamp(-4, 4) / 2;
}

// y as the op sees it: the whole buffer, or a view whose last dim alone is contiguous.
torch::Tensor view_y(const torch::Tensor& base, const Case& c) {
  return c.strided ? base.narrow(1, 1, c.T).narrow(2, 3, 3 * c.d) : base;
}

// Held in the reference dtype on the CPU, every value representable in the tested dtype, so both
// kernels see the same numbers.
struct Inputs {
  torch::Tensor base;  // the buffer y is a view of
  torch::Tensor alphas, state, grad_out;
};

Inputs make_inputs(const Case& c, torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  auto opts = torch::TensorOptions().dtype(reference_dtype(dtype));
  Inputs in;
  in.base = c.strided ? torch::randn({c.B, c.T + 2, 3 * c.d + 7}, opts)
                      : torch::randn({c.B, c.T, 3 * c.d}, opts);
  auto y = view_y(in.base, c);  // writes below go through to base
  y.narrow(2, 2 * c.d, c.d).copy_(tie_heavy({c.B, c.T, c.d}, opts));
  if (c.nans) {
    y.index_put_({0, c.T / 2, 2 * c.d + c.d / 2}, NAN);  // c: the running max becomes NaN
    y.index_put_({c.B - 1, 0, 0}, NAN);                  // a
    y.index_put_({c.B - 1, c.T - 1, c.d}, NAN);          // b
  }
  in.alphas = torch::tensor({0.3, -0.7, 1.1, 0.25, -1.5}, opts);  // all distinct
  if (c.with_state) in.state = tie_heavy({c.B, c.d}, opts);
  in.grad_out = torch::randn({c.B, c.T, c.d}, opts);
  auto representable = [&](torch::Tensor& t) {
    if (t.defined()) t = t.to(dtype).to(opts.dtype());
  };
  representable(in.base);
  representable(in.alphas);
  representable(in.state);
  representable(in.grad_out);
  return in;
}

// ---- Running the fused kernel on a device -------------------------------------------------------

struct Outputs {  // on the CPU, in the reference dtype; the gradients undefined for inference
  torch::Tensor out, state, grad_y, grad_alphas;
};

// Inference (no grad: no autograd node, no saved running max) or forward + backward given
// in.grad_out. Always GateImpl::kFused: the CPU kernel on the CPU, the CUDA kernel on CUDA.
Outputs run_fused(const Inputs& in, const Case& c, torch::Device device, torch::ScalarType dtype,
                  bool with_grad) {
  auto to = [&](const torch::Tensor& t) {
    return t.defined() ? t.to(device, dtype, /*non_blocking=*/false, /*copy=*/true) : t;
  };
  auto leaf = to(in.base).requires_grad_(with_grad);
  auto alphas = to(in.alphas).requires_grad_(with_grad);
  auto y = view_y(leaf, c);
  Outputs o;
  if (with_grad) {
    auto r = cummax_gate(y, alphas, to(in.state), GateImpl::kFused);
    auto g = torch::autograd::grad({r.out}, {leaf, alphas}, {to(in.grad_out)});
    o = {r.out, r.state, view_y(g[0], c), g[1]};
  } else {
    torch::NoGradGuard no_grad;
    auto r = cummax_gate(y, alphas, to(in.state), GateImpl::kFused);
    o = {r.out, r.state, {}, {}};
  }
  const auto ref = reference_dtype(dtype);
  auto back = [&](torch::Tensor& t) {
    if (t.defined()) t = t.detach().to(torch::kCPU, ref);
  };
  back(o.out);
  back(o.state);
  back(o.grad_y);
  back(o.grad_alphas);
  return o;
}

// ---- Comparison (gate_compare.h) --------------------------------------------------------------

using testing::expect_close;
using testing::Tol;
using testing::tol_for;

// sum |g * x| over every term of each alpha's gradient (x = b, m, a, c, m; NaN terms left out): the
// scale of the rounding of sums taken in different orders on the two devices.
torch::Tensor alpha_abs_sums(const Inputs& in, const Case& c) {
  auto y = view_y(in.base, c).to(torch::kDouble);
  auto g = in.grad_out.to(torch::kDouble).abs();
  auto a = y.narrow(2, 0, c.d), b = y.narrow(2, c.d, c.d), cc = y.narrow(2, 2 * c.d, c.d);
  torch::Tensor m;
  if (in.state.defined()) {
    auto ext = torch::cat({in.state.to(torch::kDouble).unsqueeze(1), cc}, /*dim=*/1);
    m = std::get<0>(torch::cummax(ext, /*dim=*/1)).narrow(1, 1, c.T);
  } else {
    m = std::get<0>(torch::cummax(cc, /*dim=*/1));
  }
  auto s = [&](const torch::Tensor& x) { return torch::nansum(g * x.abs()); };
  return torch::stack({s(b), s(m), s(a), s(cc), s(m)});
}

void expect_alphas_close(const torch::Tensor& got, const torch::Tensor& want,
                         const torch::Tensor& abs_sums, torch::ScalarType dtype) {
  // Sums of up to B*T*d terms in another order: within a small fraction of sum |terms|.
  const double rtol = dtype == torch::kBFloat16 ? 1.0 / 128 : 0.0;
  const double sum_tol = dtype == torch::kDouble ? 1e-13 : 1e-5;
  for (int k = 0; k < 5; ++k) {
    const double g = got[k].item<double>(), w = want[k].item<double>();
    SCOPED_TRACE("dL/dalpha" + std::to_string(k + 1));
    EXPECT_EQ(std::isnan(g), std::isnan(w)) << "got " << g << ", want " << w;
    if (std::isnan(g) || std::isnan(w)) continue;
    const double bound = rtol * std::abs(w) + sum_tol * abs_sums[k].item<double>();
    EXPECT_LE(std::abs(g - w), bound) << "got " << g << ", want " << w;
  }
}

// ---- CUDA against CPU ---------------------------------------------------------------------------

class CummaxGateCudaVsCpu : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (const char* why = why_no_gpu()) GTEST_SKIP() << why;
  }
};

TEST_P(CummaxGateCudaVsCpu, InferenceForwardMatches) {
  const auto [c, dtype] = GetParam();
  const Inputs in = make_inputs(c, dtype, /*seed=*/c.B * 100003 + c.T * 101 + c.d);
  const Tol tol = tol_for(dtype);
  auto gpu = run_fused(in, c, torch::kCUDA, dtype, /*with_grad=*/false);
  auto cpu = run_fused(in, c, torch::kCPU, reference_dtype(dtype), /*with_grad=*/false);
  expect_close(gpu.out, cpu.out, tol, "out");
  expect_close(gpu.state, cpu.state, Tol{0, 0}, "state");  // a max: exact in any dtype
}

TEST_P(CummaxGateCudaVsCpu, ForwardAndGradientsMatch) {
  const auto [c, dtype] = GetParam();
  const Inputs in = make_inputs(c, dtype, /*seed=*/c.B * 100003 + c.T * 101 + c.d + 7);
  const Tol tol = tol_for(dtype);
  auto gpu = run_fused(in, c, torch::kCUDA, dtype, /*with_grad=*/true);
  auto cpu = run_fused(in, c, torch::kCPU, reference_dtype(dtype), /*with_grad=*/true);
  expect_close(gpu.out, cpu.out, tol, "out");
  expect_close(gpu.state, cpu.state, Tol{0, 0}, "state");
  expect_close(gpu.grad_y.narrow(2, 0, c.d), cpu.grad_y.narrow(2, 0, c.d), tol, "dL/da");
  expect_close(gpu.grad_y.narrow(2, c.d, c.d), cpu.grad_y.narrow(2, c.d, c.d), tol, "dL/db");
  expect_close(gpu.grad_y.narrow(2, 2 * c.d, c.d), cpu.grad_y.narrow(2, 2 * c.d, c.d), tol,
               "dL/dc");
  expect_alphas_close(gpu.grad_alphas, cpu.grad_alphas, alpha_abs_sums(in, c), dtype);
}

// Block size 256: B*d = 1, 10, 39, 134, 500 (two blocks, the second partial), 1200 (five), 4096
// (sixteen full), 771, 40, 16; d = 1, 5, 13, 67, 257 (not multiples of 32); T = 1, and long T
// (4097, 65536) for the time loop and long sums.
INSTANTIATE_TEST_SUITE_P(
    Sizes, CummaxGateCudaVsCpu,
    ::testing::Combine(
        ::testing::Values(Case{1, 1, 1, false, false, false}, Case{2, 1, 5, true, false, false},
                          Case{3, 7, 13, true, true, false}, Case{2, 33, 67, true, true, true},
                          Case{5, 100, 100, false, false, false},
                          Case{4, 50, 300, true, false, false}, Case{8, 16, 512, true, true, false},
                          Case{3, 64, 257, false, false, true},
                          Case{1, 4097, 40, true, true, false},
                          Case{2, 65536, 8, false, false, false}),
        ::testing::Values(torch::kFloat, torch::kBFloat16, torch::kDouble)),
    [](const auto& info) {
      std::ostringstream os;
      os << std::get<0>(info.param) << "_" << dtype_name(std::get<1>(info.param));
      return os.str();
    });

// ---- Properties of the CUDA kernels alone -------------------------------------------------------

// The explicit tie rules on the device: c = [1, 1, 0] after a state of 1 (a tie with the state,
// then a tie between positions): the maximum belongs to position 1 from t = 1 on and to position 0
// at t = 0, never to the state.
TEST_F(CummaxGateCuda, TiesSendGradientToTheLatestPosition) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat).device(torch::kCUDA);
  auto y = torch::zeros({1, 3, 3}, opts);
  y.select(2, 2).copy_(torch::tensor({{1.f, 1.f, 0.f}}));
  y.requires_grad_(true);
  auto alphas = torch::zeros({5}, opts).requires_grad_(true);
  auto r = cummax_gate(y, alphas, torch::ones({1, 1}, opts), GateImpl::kFused);
  r.out.sum().backward();
  auto gc = y.grad().select(2, 2).squeeze(0).cpu();
  // dout_t/dm_t = a+b+c (alphas 0): t0: 1 -> position 0; t1: 1, t2: 0 -> position 1. Plus the
  // direct term g*m_t = 1 everywhere: gc = [1+1, 1+1, 1+0].
  EXPECT_TRUE(torch::equal(gc, torch::tensor({2.f, 2.f, 1.f}))) << gc;
}

TEST_F(CummaxGateCuda, StateCarriesTheRunningMax) {
  torch::manual_seed(3);
  auto opts = torch::TensorOptions().dtype(torch::kFloat).device(torch::kCUDA);
  auto y = torch::randn({3, 40, 3 * 37}, opts);
  auto alphas = torch::rand({5}, opts);
  auto whole = cummax_gate(y, alphas, {}, GateImpl::kFused);
  auto p1 = cummax_gate(y.narrow(1, 0, 17), alphas, {}, GateImpl::kFused);
  auto p2 = cummax_gate(y.narrow(1, 17, 23), alphas, p1.state, GateImpl::kFused);
  // The same per-element arithmetic on the same running max: bitwise equal.
  EXPECT_TRUE(torch::equal(torch::cat({p1.out, p2.out}, 1), whole.out));
  EXPECT_TRUE(torch::equal(p2.state, whole.state));
}

// Two backward passes give bitwise the same gradients: no atomics, sums in a fixed order. B*d =
// 8320 spreads the alpha sums over 33 blocks.
TEST_F(CummaxGateCuda, BackwardIsBitwiseReproducible) {
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const Case c{16, 128, 520, true, true, false};
    const Inputs in = make_inputs(c, dtype, /*seed=*/42);
    auto first = run_fused(in, c, torch::kCUDA, dtype, /*with_grad=*/true);
    auto second = run_fused(in, c, torch::kCUDA, dtype, /*with_grad=*/true);
    EXPECT_TRUE(torch::equal(first.grad_alphas, second.grad_alphas))
        << first.grad_alphas << " vs " << second.grad_alphas;
    EXPECT_TRUE(torch::equal(first.grad_y, second.grad_y));
    EXPECT_TRUE(torch::equal(first.out, second.out));
  }
}

#ifdef SAMOUT_HAVE_CUDA
// While alive, every synchronising CUDA call ATen knows of (a copy from pageable host memory,
// .item(), a stream or device synchronisation) throws; the previous mode is restored on exit.
class SyncDebugError {
 public:
  SyncDebugError() : previous_(c10::cuda::warning_state().get_sync_debug_mode()) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
  ~SyncDebugError() { c10::cuda::warning_state().set_sync_debug_mode(previous_); }
  SyncDebugError(const SyncDebugError&) = delete;
  SyncDebugError& operator=(const SyncDebugError&) = delete;

 private:
  c10::cuda::SyncDebugMode previous_;
};
#endif

// The kernels (and the op's inference path) queue work and return: no host synchronisation, no
// tensor built from host data. The results are then checked against the CPU kernel.
TEST_F(CummaxGateCuda, KernelsNeverSyncWithTheHost) {
#ifdef SAMOUT_HAVE_CUDA
  const Case c{4, 50, 300, true, false, false};
  const Inputs in = make_inputs(c, torch::kFloat, /*seed=*/5);
  auto dev = [](const torch::Tensor& t) { return t.to(torch::kCUDA); };
  auto y = dev(in.base), alphas = dev(in.alphas), state = dev(in.state), g = dev(in.grad_out);
  auto out = torch::empty({c.B, c.T, c.d}, y.options());
  auto last_m = torch::empty({c.B, c.d}, y.options());
  auto grad_y = torch::empty_like(y), grad_alphas = torch::empty({5}, y.options());
  torch::Tensor infer_out;
  {
    SyncDebugError no_syncs;
    EXPECT_NO_THROW({
      auto chunk_carry =
          cummax_gate_forward_cuda(y, alphas, state, out, last_m, cummax_gate_cuda_chunks(y));
      cummax_gate_backward_cuda(g, y, alphas, chunk_carry, grad_y, grad_alphas);
      torch::NoGradGuard no_grad;
      infer_out = cummax_gate(y, alphas, state, GateImpl::kFused).out;
    });
  }
  auto cpu = run_fused(in, c, torch::kCPU, torch::kFloat, /*with_grad=*/true);
  expect_close(out.cpu(), cpu.out, tol_for(torch::kFloat), "out");
  expect_close(infer_out.cpu(), cpu.out, tol_for(torch::kFloat), "inference out");
  expect_close(last_m.cpu(), cpu.state, Tol{0, 0}, "state");
  expect_close(grad_y.cpu(), cpu.grad_y, tol_for(torch::kFloat), "dL/dy");
  expect_alphas_close(grad_alphas.cpu(), cpu.grad_alphas, alpha_abs_sums(in, c), torch::kFloat);
#endif
}

// A tensor on another GPU than the current one: the op guards its device, so the kernels run where
// the data is (with two or more GPUs; skipped on one).
TEST_F(CummaxGateCuda, RunsOnTheTensorsDeviceNotTheCurrentOne) {
#ifdef SAMOUT_HAVE_CUDA
  if (torch::cuda::device_count() < 2) GTEST_SKIP() << "needs two GPUs";
  const Case c{3, 200, 64, true, false, false};
  const Inputs in = make_inputs(c, torch::kFloat, /*seed=*/9);
  const torch::Device second(torch::kCUDA, 1);
  c10::cuda::set_device(0);
  auto to = [&](const torch::Tensor& t) { return t.to(second, torch::kFloat); };
  auto y = to(in.base).requires_grad_(), alphas = to(in.alphas).requires_grad_();
  auto r = cummax_gate(y, alphas, to(in.state), GateImpl::kFused);
  auto grads = torch::autograd::grad({r.out}, {y, alphas}, {to(in.grad_out)});
  EXPECT_EQ(c10::cuda::current_device(), 0);
  EXPECT_EQ(r.out.device(), second);
  auto cpu = run_fused(in, c, torch::kCPU, torch::kFloat, /*with_grad=*/true);
  expect_close(r.out.cpu(), cpu.out, tol_for(torch::kFloat), "out");
  expect_close(grads[0].cpu(), cpu.grad_y, tol_for(torch::kFloat), "dL/dy");
#endif
}

}  // namespace
}  // namespace samout::ops
