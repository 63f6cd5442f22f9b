// cummax_gate across a context-parallel group (ops/context_parallel.h), against the composite on
// the whole sequence. The "ranks" are threads of this process with an in-process all-gather, so
// every case of the exchange (ties across slices, NaN, wholly carried slices) is checked here; the
// MPI and NCCL all-gathers are tested end to end under mpirun (tests/train).
#include "samout/ops/context_parallel.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

namespace samout::ops {
namespace {

// All-gather among n threads: each puts its tensor in its slot; everyone waits for all.
class ThreadGather {
 public:
  explicit ThreadGather(int n) : n_(n), slots_(n) {}
  torch::Tensor gather(int index, const torch::Tensor& x) {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t round = round_;
    slots_[index] = x.clone();
    if (++arrived_ == n_) {
      result_ = torch::stack(slots_);
      arrived_ = 0;
      ++round_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return round_ != round; });
    }
    return result_;
  }

 private:
  int n_, arrived_ = 0;
  int64_t round_ = 0;
  std::vector<torch::Tensor> slots_;
  torch::Tensor result_;
  std::mutex mu_;
  std::condition_variable cv_;
};

struct Grads {
  torch::Tensor out, grad_y, grad_alphas;
};

Grads whole(const torch::Tensor& y, const torch::Tensor& alphas, const torch::Tensor& g) {
  auto yl = y.clone().requires_grad_(true), al = alphas.clone().requires_grad_(true);
  auto r = cummax_gate_composite(yl, al);
  auto grads = torch::autograd::grad({r.out}, {yl, al}, {g});
  return {r.out.detach(), grads[0], grads[1]};
}

Grads split(const torch::Tensor& y, const torch::Tensor& alphas, const torch::Tensor& g, int n) {
  const int64_t T = y.size(1), Tn = T / n;
  ThreadGather gather(n);
  std::vector<Grads> parts(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      ContextGroup group{i, n,
                         [&gather, i](const torch::Tensor& x) { return gather.gather(i, x); }};
      auto yl = y.narrow(1, i * Tn, Tn).clone().requires_grad_(true);
      auto al = alphas.clone().requires_grad_(true);
      auto r = cummax_gate_context_parallel(yl, al, group);
      auto grads = torch::autograd::grad({r.out}, {yl, al}, {g.narrow(1, i * Tn, Tn)});
      parts[i] = {r.out.detach(), grads[0], grads[1]};
    });
  }
  for (auto& t : threads) t.join();
  Grads r;
  std::vector<torch::Tensor> outs, gys;
  r.grad_alphas = torch::zeros_like(alphas);
  for (auto& p : parts) {
    outs.push_back(p.out);
    gys.push_back(p.grad_y);
    r.grad_alphas += p.grad_alphas;  // what the gradient all-reduce does
  }
  r.out = torch::cat(outs, 1);
  r.grad_y = torch::cat(gys, 1);
  return r;
}

void expect_same(const Grads& got, const Grads& want, const std::string& what) {
  EXPECT_TRUE(torch::allclose(got.out, want.out, 1e-12, 1e-12, /*equal_nan=*/true))
      << what << " out";
  EXPECT_TRUE(torch::allclose(got.grad_y, want.grad_y, 1e-10, 1e-10, true))
      << what << " grad y: max diff "
      << (got.grad_y - want.grad_y).abs().nan_to_num(0).max().item<double>();
  EXPECT_TRUE(torch::allclose(got.grad_alphas, want.grad_alphas, 1e-9, 1e-9, true))
      << what << " grad alphas " << got.grad_alphas << " vs " << want.grad_alphas;
}

TEST(ContextParallelGate, MatchesTheWholeSequence) {
  torch::manual_seed(1);
  const auto opt = torch::TensorOptions(torch::kDouble);
  int cases = 0;
  for (int n : {2, 3, 4}) {
    for (int64_t Tn : {1, 2, 5}) {
      for (int trial = 0; trial < 12; ++trial) {
        const int64_t B = 2, d = 7, T = Tn * n;
        // Small integers: many ties within and across slices; trial-dependent NaNs and
        // descending runs that make whole slices carry-owned.
        auto y = torch::randint(0, 4, {B, T, 3 * d}, opt);
        if (trial % 3 == 1) {
          auto c = y.narrow(2, 2 * d, d);
          c.copy_(torch::arange(T, 0, -1, opt).view({1, T, 1}).expand({B, T, d}));  // falling
        }
        if (trial % 4 == 3) y.index_put_({0, (trial * 7) % T, 2 * d + 1}, NAN);
        if (trial % 5 == 4) y.index_put_({1, T - 1, 2 * d + 2}, NAN);
        auto alphas = torch::rand({5}, opt);
        auto g = torch::randn({B, T, d}, opt);
        expect_same(split(y, alphas, g, n), whole(y, alphas, g),
                    "N=" + std::to_string(n) + " T/N=" + std::to_string(Tn) + " trial " +
                        std::to_string(trial));
        ++cases;
      }
    }
  }
  EXPECT_EQ(cases, 108);
}

TEST(ContextParallelGate, InferenceNeedsNoGraph) {
  torch::manual_seed(2);
  auto y = torch::randn({3, 8, 15}, torch::kDouble), alphas = torch::rand({5}, torch::kDouble);
  auto want = cummax_gate_composite(y, alphas).out;
  ThreadGather gather(2);
  std::vector<torch::Tensor> outs(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      torch::NoGradGuard no_grad;
      ContextGroup group{i, 2,
                         [&gather, i](const torch::Tensor& x) { return gather.gather(i, x); }};
      outs[i] = cummax_gate_context_parallel(y.narrow(1, 4 * i, 4), alphas, group).out;
    });
  for (auto& t : threads) t.join();
  EXPECT_TRUE(torch::allclose(torch::cat(outs, 1), want, 1e-12, 1e-12));
}

}  // namespace
}  // namespace samout::ops

namespace samout::ops {
namespace {

// The slice scans against docs/scan.md's rules written directly on tensors: C_0 = -inf,
// C_j = take_max(C_{j-1}, M_{j-1}); R_j = G_j + (slice j wholly carried ? R_{j+1} : 0).
void expect_slice_scans(torch::Device device, torch::ScalarType dtype) {
  torch::manual_seed(7);
  const int64_t N = 5, B = 3, d = 33;
  // Few distinct values: ties across slices; some NaN; a slice entirely below its carry.
  auto M = torch::randint(0, 4, {N, B, d}).to(dtype);
  M.index_put_({2, 0}, std::numeric_limits<double>::quiet_NaN());
  M.index_put_({4, 1}, -1.0);
  auto G = torch::randn({N, B, d}, dtype);
  auto take_max = [](const torch::Tensor& r, const torch::Tensor& v) {
    return torch::where(v.ge(r).logical_or(v.isnan()), v, r);
  };
  std::vector<torch::Tensor> C_ref{torch::full({B, d}, -INFINITY, dtype)};
  for (int64_t j = 1; j < N; ++j) C_ref.push_back(take_max(C_ref.back(), M[j - 1]));
  auto C_want = torch::stack(C_ref);
  std::vector<torch::Tensor> R_ref(N);
  auto R_next = torch::zeros({B, d}, dtype);
  for (int64_t j = N - 1; j >= 0; --j) {
    auto full = M[j].ge(C_want[j]).logical_or(M[j].isnan()).logical_not();
    R_next = G[j] + torch::where(full, R_next, torch::zeros_like(R_next));
    R_ref[j] = R_next;
  }
  auto C = slice_carries(M.to(device)).cpu();
  auto R = slice_gradient_sums(G.to(device), M.to(device), C_want.to(device)).cpu();
  EXPECT_TRUE(torch::equal(C.isnan(), C_want.isnan()));
  EXPECT_TRUE(torch::equal(C.nan_to_num(1e9), C_want.nan_to_num(1e9)));
  EXPECT_TRUE(torch::equal(R, torch::stack(R_ref)));  // same order of additions: bitwise
}

TEST(SliceScans, MatchTheRulesOnTheCpu) {
  expect_slice_scans(torch::kCPU, torch::kFloat);
  expect_slice_scans(torch::kCPU, torch::kDouble);
}

TEST(SliceScans, MatchTheRulesOnTheGpu) {
  if (!torch::cuda::is_available() || !cuda_kernels_compiled()) GTEST_SKIP() << "no CUDA device";
  expect_slice_scans(torch::kCUDA, torch::kFloat);
  expect_slice_scans(torch::kCUDA, torch::kDouble);
}

}  // namespace
}  // namespace samout::ops
