// The chunked scan of samout/ops/cummax_scan.h against the composite (torch.cummax and autograd, in
// double, the state prepended at position -1 as cummax_gate_composite does): the running maximum m,
// dL/dc and dL/ds, at every chunk length from 1 to T, with ties within and across chunks, NaNs at
// chunk borders, carried states (-inf, a number, NaN, equal to a value of the sequence). Then the
// same pieces laid out as (chunk, lane) arrays, as ranks and kernels hold them. Then the CPU kernel
// built on them: against the composite with both of its schedules, and bitwise the same at any
// thread count.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <vector>

#include "samout/ops/cummax_gate.h"
#include "samout/ops/cummax_scan.h"

namespace samout::ops {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::nan("");

// ---- The scan against the composite -------------------------------------------------------------

struct Composite {
  std::vector<double> m, dc;
  double ds;
};

// torch.cummax over [s, c], and autograd's dL/dc and dL/ds for dL/dm = gm.
Composite composite(const std::vector<double>& c, double s, const std::vector<double>& gm) {
  const int64_t T = static_cast<int64_t>(c.size());
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto ct = torch::tensor(c, opts).requires_grad_(true);
  auto st = torch::full({1}, s, opts).requires_grad_(true);
  auto m = std::get<0>(torch::cummax(torch::cat({st, ct}), /*dim=*/0)).narrow(0, 1, T);
  auto grads = torch::autograd::grad({m}, {ct, st}, {torch::tensor(gm, opts)});
  Composite r;
  auto md = m.detach().contiguous(), dcd = grads[0].contiguous();
  r.m.assign(md.data_ptr<double>(), md.data_ptr<double>() + T);
  r.dc.assign(dcd.data_ptr<double>(), dcd.data_ptr<double>() + T);
  r.ds = grads[1].item<double>();
  return r;
}

bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

struct Scanned {
  std::vector<double> m, dc;
  double last, ds;
};

Scanned reference(const std::vector<double>& c, double s, const std::vector<double>& gm,
                  int64_t L) {
  const int64_t T = static_cast<int64_t>(c.size());
  const int64_t K = scan::num_chunks(T, L);
  Scanned r;
  r.m.resize(T);
  r.dc.resize(T);
  std::vector<double> work(K);
  std::unique_ptr<bool[]> full(new bool[K]);
  r.last = scan::reference_forward(c.data(), T, s, L, r.m.data(), work.data());
  r.ds = scan::reference_backward(c.data(), r.m.data(), gm.data(), T, L, r.dc.data(), work.data(),
                                  full.get());
  return r;
}

// One random case: a sequence of small integers (many ties) with, sometimes, NaNs and -infs, NaNs
// placed at the borders of chunks of a length `L_nan` (border positions k L - 1 and k L), and a state.
struct RandomCase {
  std::vector<double> c, gm;
  double s;
};

RandomCase random_case(std::mt19937& rng, bool integer_gm) {
  std::uniform_int_distribution<int> len(1, 40), val(0, 5), coin(0, 9), small(-3, 3);
  std::normal_distribution<double> normal;
  RandomCase rc;
  const int T = len(rng);
  for (int t = 0; t < T; ++t) {
    double v = val(rng);
    if (coin(rng) == 0) v = -kInf;  // ties with a -inf state
    rc.c.push_back(v);
    rc.gm.push_back(integer_gm ? small(rng) : normal(rng));
  }
  const int nan_mode = coin(rng);
  if (nan_mode < 3) {  // NaNs at chunk borders
    const int L = std::uniform_int_distribution<int>(1, T)(rng);
    for (int k = 1; k * L <= T; ++k) {
      if (coin(rng) < 3) rc.c[k * L - 1] = kNaN;
      if (k * L < T && coin(rng) < 3) rc.c[k * L] = kNaN;
    }
  } else if (nan_mode == 3) {  // one NaN anywhere
    rc.c[std::uniform_int_distribution<int>(0, T - 1)(rng)] = kNaN;
  }
  switch (coin(rng) % 5) {
    case 0:
      rc.s = -kInf;
      break;  // no state
    case 1:
      rc.s = kNaN;
      break;  // a NaN state
    case 2:
      rc.s = rc.c[std::uniform_int_distribution<int>(0, T - 1)(rng)];
      break;  // a tie
    case 3:
      rc.s = 6;
      break;  // above all
    default:
      rc.s = val(rng);
      break;
  }
  return rc;
}

// Every chunk length from 1 to T on thousands of random cases: m and the final state bitwise, dL/dc
// and dL/ds exactly (integer gradients: every sum is exact in double, whatever its order) or within
// rounding (normal gradients).
TEST(CummaxScan, ReferenceMatchesCompositeAtEveryChunkLength) {
  std::mt19937 rng(2024);
  int64_t cases = 0, runs = 0, mismatches = 0;
  for (int i = 0; i < 4000; ++i) {
    const bool integer_gm = i % 4 != 3;
    const RandomCase rc = random_case(rng, integer_gm);
    const Composite want = composite(rc.c, rc.s, rc.gm);
    const int64_t T = static_cast<int64_t>(rc.c.size());
    ++cases;
    for (int64_t L = 1; L <= T; ++L, ++runs) {
      const Scanned got = reference(rc.c, rc.s, rc.gm, L);
      bool ok = same(got.last, want.m[T - 1]) || (T == 0);
      for (int64_t t = 0; t < T; ++t) {
        ok = ok && same(got.m[t], want.m[t]);
        if (integer_gm) {
          ok = ok && same(got.dc[t], want.dc[t]);
        } else {
          ok = ok && std::abs(got.dc[t] - want.dc[t]) <= 1e-12 * (1 + std::abs(want.dc[t]));
        }
      }
      ok = ok && (integer_gm ? same(got.ds, want.ds)
                             : std::abs(got.ds - want.ds) <= 1e-12 * (1 + std::abs(want.ds)));
      if (!ok && ++mismatches <= 5) {
        std::ostringstream os;
        os << "case " << i << " L=" << L << " s=" << rc.s << "\n  c:";
        for (double v : rc.c) os << " " << v;
        os << "\n  gm:";
        for (double v : rc.gm) os << " " << v;
        os << "\n  dc want/got:";
        for (int64_t t = 0; t < T; ++t) os << " " << want.dc[t] << "/" << got.dc[t];
        os << "\n  ds want/got: " << want.ds << "/" << got.ds;
        ADD_FAILURE() << os.str();
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << runs << " runs over " << cases << " cases";
  EXPECT_GT(runs, 40000);
  std::printf("[ scan ] %ld cases, %ld (case, chunk length) runs, %ld mismatches\n", cases, runs,
              mismatches);
}

// Hand-picked cases whose answer is plain.
TEST(CummaxScan, TiesAndNaNsAcrossChunkBorders) {
  struct Hand {
    std::vector<double> c;
    double s;
    std::vector<double> m, dc;  // for gm = 1 everywhere
    double ds;
  };
  const std::vector<Hand> hands = {
      // A tie with the state: c_0 wins (later), and owns everything.
      {{3, 1, 2, 0}, 3, {3, 3, 3, 3}, {4, 0, 0, 0}, 0},
      // The state above everything owns everything: every chunk full.
      {{1, 2, 1, 2}, 5, {5, 5, 5, 5}, {0, 0, 0, 0}, 4},
      // Ties across every border: each 2 takes over from the previous one.
      {{2, 2, 2, 2}, -kInf, {2, 2, 2, 2}, {1, 1, 1, 1}, 0},
      // A NaN state owns until the first NaN of the sequence, which then owns the rest.
      {{1, 2, kNaN, 3}, kNaN, {kNaN, kNaN, kNaN, kNaN}, {0, 0, 2, 0}, 2},
      // A NaN owns the bigger value after it; a later NaN takes over (the latest NaN wins).
      {{1, kNaN, 5, kNaN}, -kInf, {1, kNaN, kNaN, kNaN}, {1, 2, 0, 1}, 0},
  };
  for (const Hand& h : hands) {
    const std::vector<double> gm(h.c.size(), 1.0);
    const Composite want = composite(h.c, h.s, gm);
    for (size_t t = 0; t < h.c.size(); ++t) {
      ASSERT_TRUE(same(want.m[t], h.m[t])) << "composite m, t=" << t;
      ASSERT_EQ(want.dc[t], h.dc[t]) << "composite dc, t=" << t;
    }
    ASSERT_EQ(want.ds, h.ds);
    for (int64_t L = 1; L <= static_cast<int64_t>(h.c.size()); ++L) {
      const Scanned got = reference(h.c, h.s, gm, L);
      for (size_t t = 0; t < h.c.size(); ++t) {
        EXPECT_TRUE(same(got.m[t], h.m[t])) << "L=" << L << " t=" << t;
        EXPECT_EQ(got.dc[t], h.dc[t]) << "L=" << L << " t=" << t;
      }
      EXPECT_EQ(got.ds, h.ds) << "L=" << L;
    }
  }
}

// The pieces as a context-parallel group or a kernel holds them: K chunks ("ranks") of `lanes`
// sequences each, summaries as (K, lanes) arrays (stride = lanes). full_k from the forward
// (chunk_full(M_k, C_k)) must agree with what the backward's phase 1 finds, and both forms of
// backward_carries must give the per-sequence reference's result bitwise.
TEST(CummaxScan, SlicesOfManySequences) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> val(0, 4), coin(0, 19), small(-3, 3);
  for (int rep = 0; rep < 200; ++rep) {
    const int64_t lanes = 1 + rep % 7, L = 1 + rep % 5, K = 1 + rep % 6, T = L * K;
    // x[t * lanes + j]: time-major, as (T, d) rows are.
    std::vector<double> c(T * lanes), gm(T * lanes), s(lanes);
    for (auto& v : c) v = coin(rng) == 0 ? kNaN : val(rng);
    for (auto& v : gm) v = small(rng);
    for (auto& v : s) v = coin(rng) < 2 ? kNaN : coin(rng) < 5 ? -kInf : val(rng);

    // Forward: phase 1 per (chunk, lane); phase 2 per lane over the gathered (K, lanes) maxima.
    std::vector<double> M(K * lanes), C(K * lanes), last(lanes), m(T * lanes);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < lanes; ++j)
        M[k * lanes + j] = scan::chunk_max(&c[k * L * lanes + j], L, lanes);
    for (int64_t j = 0; j < lanes; ++j)
      last[j] = scan::forward_carries(&M[j], K, s[j], &C[j], lanes);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < lanes; ++j)
        scan::chunk_forward(&c[k * L * lanes + j], L, C[k * lanes + j], &m[k * L * lanes + j],
                            lanes);
    // Backward.
    std::vector<double> G(K * lanes), R1(K * lanes), R2(K * lanes), dc(T * lanes), ds(lanes);
    std::unique_ptr<bool[]> full(new bool[K * lanes]);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < lanes; ++j) {
        const int64_t at = k * L * lanes + j;
        G[k * lanes + j] =
            scan::carry_prefix_sum(&c[at], &m[at], &gm[at], L, &full[k * lanes + j], lanes);
        ASSERT_EQ(full[k * lanes + j], scan::chunk_full(M[k * lanes + j], C[k * lanes + j]))
            << "rep " << rep << " k " << k << " j " << j;
        EXPECT_EQ(scan::is_nan(M[k * lanes + j]), std::isnan(M[k * lanes + j]));
      }
    for (int64_t j = 0; j < lanes; ++j) {
      ds[j] = scan::backward_carries(&G[j], &full[j], K, &R1[j], lanes);
      EXPECT_EQ(scan::backward_carries(&G[j], &M[j], &C[j], K, &R2[j], lanes), ds[j]);
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < lanes; ++j) {
        const double R_next = k + 1 < K ? R1[(k + 1) * lanes + j] : 0.0;
        const int64_t at = k * L * lanes + j;
        scan::chunk_backward(&c[at], &m[at], &gm[at], L,
                             scan::acc_start(full[k * lanes + j], R_next), &dc[at], lanes);
      }
    for (int64_t j = 0; j < lanes; ++j) {
      std::vector<double> cj(T), gj(T);
      for (int64_t t = 0; t < T; ++t) {
        cj[t] = c[t * lanes + j];
        gj[t] = gm[t * lanes + j];
      }
      const Scanned want = reference(cj, s[j], gj, L);
      const Composite comp = composite(cj, s[j], gj);
      EXPECT_TRUE(same(last[j], want.last));
      EXPECT_TRUE(same(ds[j], want.ds) && same(ds[j], comp.ds)) << ds[j] << " " << comp.ds;
      for (int64_t k = 0; k < K; ++k) EXPECT_EQ(R1[k * lanes + j], R2[k * lanes + j]);
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_TRUE(same(m[t * lanes + j], want.m[t]) && same(m[t * lanes + j], comp.m[t]));
        EXPECT_TRUE(same(dc[t * lanes + j], want.dc[t]) && same(dc[t * lanes + j], comp.dc[t]))
            << "rep " << rep << " lane " << j << " t " << t;
      }
    }
  }
}

// ---- The CPU kernel on the scan -------------------------------------------------------------------

// The thread count for the rest of a scope, restored after.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(at::get_num_threads()) { at::set_num_threads(n); }
  ~ThreadCount() { at::set_num_threads(saved_); }

 private:
  int saved_;
};

struct GateOut {
  torch::Tensor out, state, grad_y, grad_alphas;
};

GateOut gate(GateImpl impl, const torch::Tensor& y0, const torch::Tensor& alphas0,
             const torch::Tensor& state, const torch::Tensor& grad_out) {
  auto y = y0.clone().requires_grad_(true);
  auto alphas = alphas0.clone().requires_grad_(true);
  auto r = cummax_gate(y, alphas, state, impl);
  auto g = torch::autograd::grad({r.out}, {y, alphas}, {grad_out});
  return {r.out.detach(), r.state, g[0], g[1]};
}

struct KernelCase {
  int64_t B, T, d;
};

// Shapes around the kernel's chunk (256 steps) and tile (512 channels), with (b, tile) counts from 1
// to 12: at 1, 2 and 3 threads each one runs serially over time at some thread counts and
// time-parallel at others (time-parallel below 4 (b, tile) pairs a thread).
const KernelCase kKernelCases[] = {{1, 1000, 70}, {4, 700, 64}, {1, 257, 600}, {3, 513, 1030},
                                   {2, 256, 5},   {5, 1100, 3}, {7, 300, 16},  {12, 600, 8},
                                   {1, 5, 600},   {2, 2049, 33}};

// Integer inputs and alphas that are multiples of 1/4, in double: every product and sum the op
// forms is exact, so the fused kernel must equal the composite exactly, whatever the order of its
// sums. Values from {-2..2} tie often, within and across chunks, and with the state.
TEST(CummaxGateScan, KernelEqualsCompositeExactly) {
  for (const KernelCase& kc : kKernelCases) {
    for (int state_kind = 0; state_kind < 3; ++state_kind) {
      torch::manual_seed(kc.B * 7 + kc.T + kc.d + state_kind);
      auto opts = torch::TensorOptions().dtype(torch::kDouble);
      auto y = torch::randint(-2, 3, {kc.B, kc.T, 3 * kc.d}, opts);
      auto alphas = torch::tensor({0.25, -0.5, 1.0, 0.75, -1.25}, opts);
      auto g = torch::randint(-3, 4, {kc.B, kc.T, kc.d}, opts);
      torch::Tensor state;
      if (state_kind == 1) state = torch::randint(-2, 3, {kc.B, kc.d}, opts);  // ties with c
      if (state_kind == 2) state = torch::full({kc.B, kc.d}, 2.0, opts);       // often owns all
      const GateOut want = gate(GateImpl::kComposite, y, alphas, state, g);
      for (int threads : {1, 2, 3}) {
        ThreadCount tc(threads);
        SCOPED_TRACE(::testing::Message() << "B" << kc.B << " T" << kc.T << " d" << kc.d
                                          << " state " << state_kind << " threads " << threads);
        const GateOut got = gate(GateImpl::kFused, y, alphas, state, g);
        EXPECT_TRUE(torch::equal(got.out, want.out));
        EXPECT_TRUE(torch::equal(got.state, want.state));
        EXPECT_TRUE(torch::equal(got.grad_y, want.grad_y));
        EXPECT_TRUE(torch::equal(got.grad_alphas, want.grad_alphas));
      }
    }
  }
}

// NaNs in c at chunk borders (t = 255, 256, 511, 512) and a NaN state, in double with real values:
// NaN in the same places as the composite, close elsewhere.
TEST(CummaxGateScan, KernelFollowsCompositeWithNaNs) {
  auto close = [](const torch::Tensor& got, const torch::Tensor& want, const char* what) {
    ASSERT_TRUE(torch::equal(got.isnan(), want.isnan())) << what;
    auto ok = ~want.isnan();
    if (ok.sum().item<int64_t>() == 0) return;
    auto w = want.masked_select(ok);
    EXPECT_LE((got.masked_select(ok) - w).abs().max().item<double>(),
              1e-10 * (1 + w.abs().max().item<double>()))
        << what;
  };
  for (const KernelCase& kc : {KernelCase{1, 700, 40}, KernelCase{3, 600, 520}}) {
    torch::manual_seed(kc.T);
    auto opts = torch::TensorOptions().dtype(torch::kDouble);
    auto y = torch::randn({kc.B, kc.T, 3 * kc.d}, opts);
    for (int64_t t : {255, 256, 511, 512}) y.index_put_({0, t, 2 * kc.d + t % kc.d}, kNaN);
    y.index_put_({kc.B - 1, 300, 2 * kc.d + 1}, kNaN);
    auto state = torch::randn({kc.B, kc.d}, opts);
    state.index_put_({0, 3}, kNaN);
    auto alphas = torch::tensor({0.3, -0.7, 1.1, 0.25, -1.5}, opts);
    auto g = torch::randn({kc.B, kc.T, kc.d}, opts);
    const GateOut want = gate(GateImpl::kComposite, y, alphas, state, g);
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      SCOPED_TRACE(::testing::Message() << "T" << kc.T << " d" << kc.d << " threads " << threads);
      const GateOut got = gate(GateImpl::kFused, y, alphas, state, g);
      close(got.out, want.out, "out");
      close(got.state, want.state, "state");
      // dL/da and dL/db are finite wherever m is; dL/dc at positions owning a NaN maximum, and the
      // alpha sums that include them, are NaN in both.
      close(got.grad_y, want.grad_y, "grad_y");
      close(got.grad_alphas, want.grad_alphas, "grad_alphas");
    }
  }
}

// fp32 and bf16 on random (non-exact) inputs: bitwise the same at 1, 2, 3 and 4 threads, which
// covers both schedules for every shape here.
TEST(CummaxGateScan, BitwiseAtAnyThreadCount) {
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const KernelCase& kc : kKernelCases) {
      torch::manual_seed(kc.B + kc.T + kc.d);
      auto y = torch::randn({kc.B, kc.T, 3 * kc.d}).to(dtype);
      auto alphas = (0.5 + 0.1 * torch::randn({5})).to(dtype);
      auto g = torch::randn({kc.B, kc.T, kc.d}).to(dtype);
      auto state = (torch::randn({kc.B, kc.d}) + 1).to(dtype);
      GateOut first;
      for (int threads : {1, 2, 3, 4}) {
        ThreadCount tc(threads);
        SCOPED_TRACE(::testing::Message() << c10::toString(dtype) << " B" << kc.B << " T" << kc.T
                                          << " d" << kc.d << " threads " << threads);
        const GateOut got = gate(GateImpl::kFused, y, alphas, state, g);
        if (threads == 1) {
          first = got;
          continue;
        }
        EXPECT_TRUE(torch::equal(got.out, first.out));
        EXPECT_TRUE(torch::equal(got.state, first.state));
        EXPECT_TRUE(torch::equal(got.grad_y, first.grad_y));
        EXPECT_TRUE(torch::equal(got.grad_alphas, first.grad_alphas));
      }
      // And close to the double composite (the kernel's sums over chunks of 256 steps).
      const GateOut ref =
          gate(GateImpl::kComposite, y.to(torch::kDouble), alphas.to(torch::kDouble),
               state.to(torch::kDouble), g.to(torch::kDouble));
      const double tol = dtype == torch::kFloat ? 1e-4 : 5e-2;
      auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
        return ((a.to(torch::kDouble) - b).abs().max() / (1 + b.abs().max())).item<double>();
      };
      EXPECT_LE(rel(first.out, ref.out), tol);
      EXPECT_LE(rel(first.grad_y, ref.grad_y), tol);
      EXPECT_LE(rel(first.grad_alphas, ref.grad_alphas), tol);
    }
  }
}

}  // namespace
}  // namespace samout::ops
