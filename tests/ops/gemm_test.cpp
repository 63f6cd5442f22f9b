// gemm_cpu and linear against ATen in double: every layout the model uses, ragged edges of the
// 6 x 16 register tile and of the K/M/N cache blocks, beta, threads, and the autograd function.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "samout/ops/gemm.h"
#include "samout/ops/linear.h"

namespace samout::ops {
namespace {

double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const auto w = want.to(torch::kDouble);
  const double scale = std::max(1.0, w.abs().max().item<double>());
  return (got.to(torch::kDouble) - w).abs().max().item<double>() / scale;
}

// A (M, K) and B (K, N) in the layout asked for: row-major, or a transposed view of a row-major
// matrix (what w.t() and dy.t() are).
torch::Tensor make(int64_t rows, int64_t cols, bool transposed) {
  return transposed ? torch::randn({cols, rows}).t() : torch::randn({rows, cols});
}

class GemmShapes
    : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, bool, bool>> {};

TEST_P(GemmShapes, MatchesDoubleReference) {
  const auto [M, K, N, ta, tb] = GetParam();
  torch::manual_seed(M * 131 + K * 7 + N);
  const auto A = make(M, K, ta), B = make(K, N, tb);
  const auto want = torch::mm(A.to(torch::kDouble), B.to(torch::kDouble));
  // beta = 0 must not read C: start from NaN.
  auto C = torch::full({M, N}, std::numeric_limits<float>::quiet_NaN());
  gemm_cpu(A, B, C, 0.0f);
  EXPECT_LT(rel_err(C, want), 1e-5) << M << "x" << K << "x" << N;
  // beta = 1 accumulates; beta = 0.5 scales what was there.
  auto C1 = torch::randn({M, N});
  const auto before = C1.to(torch::kDouble);
  gemm_cpu(A, B, C1, 1.0f);
  EXPECT_LT(rel_err(C1, before + want), 1e-5);
  auto C2 = C1.clone();
  const auto before2 = C2.to(torch::kDouble);
  gemm_cpu(A, B, C2, 0.5f);
  EXPECT_LT(rel_err(C2, 0.5 * before2 + want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, GemmShapes,
    ::testing::Combine(
        // M: one row, a partial register tile, several MC blocks; K: one, odd, past KC twice;
        // N: one, partial NR tile, several.
        ::testing::Values<int64_t>(1, 7, 300), ::testing::Values<int64_t>(1, 37, 600),
        ::testing::Values<int64_t>(1, 29, 100), ::testing::Bool(), ::testing::Bool()));

TEST(Gemm, ModelShapesAndBlocks) {
  // The head's forward spans more than one NC block (N = 8460 > 4096) and the product is split
  // across threads.
  torch::manual_seed(1);
  for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{98, 512, 8460},
                         {1568, 64, 1536},
                         {33, 1568, 130}}) {
    const auto A = torch::randn({M, K}), W = torch::randn({N, K});
    auto C = torch::empty({M, N});
    gemm_cpu(A, W.t(), C, 0.0f);
    EXPECT_LT(rel_err(C, torch::mm(A.to(torch::kDouble), W.t().to(torch::kDouble))), 1e-5);
  }
}

TEST(Gemm, SameBitsForAnyThreadCountAndRowPosition) {
  torch::manual_seed(2);
  const auto A = torch::randn({301, 517}), B = torch::randn({517, 203});
  auto one = torch::empty({301, 203}), two = torch::empty({301, 203});
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  gemm_cpu(A, B, one, 0.0f);
  at::set_num_threads(2);
  gemm_cpu(A, B, two, 0.0f);
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(one, two));
  // A row's result does not depend on the rows around it (no batch-size dependence).
  auto row = torch::empty({1, 203});
  gemm_cpu(A.narrow(0, 150, 1), B, row, 0.0f);
  EXPECT_TRUE(torch::equal(row, one.narrow(0, 150, 1)));
}

TEST(Gemm, EmptyAndStridedOutput) {
  auto C = torch::full({3, 4}, 2.0f);
  gemm_cpu(torch::empty({3, 0}), torch::empty({0, 4}), C, 0.5f);  // K = 0: C = beta * C
  EXPECT_TRUE(torch::equal(C, torch::full({3, 4}, 1.0f)));
  // C as a column slice of a wider buffer (row stride > N).
  torch::manual_seed(3);
  const auto A = torch::randn({20, 40}), B = torch::randn({40, 18});
  auto wide = torch::zeros({20, 50});
  auto C2 = wide.narrow(1, 5, 18);
  gemm_cpu(A, B, C2, 0.0f);
  EXPECT_LT(rel_err(C2, torch::mm(A.to(torch::kDouble), B.to(torch::kDouble))), 1e-5);
  EXPECT_EQ(wide.narrow(1, 0, 5).abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(wide.narrow(1, 23, 27).abs().sum().item<float>(), 0.0f);
}

// A as a column slice of a wider matrix (row stride > K), with K past one KC block and rows that end
// in a partial register panel: the packing reads every row at its own stride.
TEST(Gemm, StridedRowsOfA) {
  torch::manual_seed(4);
  for (int64_t M : {6, 7, 83}) {
    auto wide = torch::randn({M, 700});
    const auto A = wide.narrow(1, 3, 600);
    const auto B = torch::randn({600, 37});
    auto C = torch::empty({M, 37});
    gemm_cpu(A, B, C, 0.0f);
    EXPECT_LT(rel_err(C, torch::mm(A.to(torch::kDouble), B.to(torch::kDouble))), 1e-5) << "M=" << M;
  }
}

TEST(Gemm, RejectsBadArguments) {
  auto C = torch::empty({2, 3});
  EXPECT_THROW(gemm_cpu(torch::randn({2, 4}), torch::randn({5, 3}), C), c10::Error);
  EXPECT_THROW(gemm_cpu(torch::randn({2, 4}, torch::kDouble), torch::randn({4, 3}), C), c10::Error);
  auto Ct = torch::empty({3, 2}).t();
  EXPECT_THROW(gemm_cpu(torch::randn({2, 4}), torch::randn({4, 3}), Ct), c10::Error);
}

TEST(Linear, ForwardAndGradientsMatchATen) {
  torch::manual_seed(4);
  for (bool bias : {true, false}) {
    auto x = torch::randn({3, 49, 67}, torch::requires_grad());
    auto w = torch::randn({130, 67}, torch::requires_grad());
    auto b = bias ? torch::randn({130}, torch::requires_grad()) : torch::Tensor();
    ASSERT_TRUE(linear_uses_gemm_cpu(x, w, b));
    auto y = samout::ops::linear(x, w, b);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 49, 130}));
    const auto dy = torch::randn_like(y);
    y.backward(dy);

    auto xd = x.detach().to(torch::kDouble).requires_grad_();
    auto wd = w.detach().to(torch::kDouble).requires_grad_();
    auto bd = bias ? b.detach().to(torch::kDouble).requires_grad_() : torch::Tensor();
    auto yd = torch::nn::functional::linear(xd, wd, bd);
    yd.backward(dy.to(torch::kDouble));
    EXPECT_LT(rel_err(y, yd), 1e-5);
    EXPECT_LT(rel_err(x.grad(), xd.grad()), 1e-5);
    EXPECT_LT(rel_err(w.grad(), wd.grad()), 1e-5);
    if (bias) {
      EXPECT_LT(rel_err(b.grad(), bd.grad()), 1e-5);
    }
  }
}

TEST(Linear, OnlyTheNeededGradientsAndOtherDtypes) {
  torch::manual_seed(5);
  auto x = torch::randn({4, 8});  // no grad: only dw
  auto w = torch::randn({5, 8}, torch::requires_grad());
  samout::ops::linear(x, w).sum().backward();
  EXPECT_LT(rel_err(w.grad(), x.sum(0).expand({5, 8})), 1e-5);
  // Double goes to at::linear and still works.
  auto xd = torch::randn({4, 8}, torch::kDouble), wd = torch::randn({5, 8}, torch::kDouble);
  EXPECT_FALSE(linear_uses_gemm_cpu(xd, wd, {}));
  EXPECT_TRUE(torch::allclose(samout::ops::linear(xd, wd), torch::mm(xd, wd.t())));
  // No grad mode: plain forward.
  torch::NoGradGuard ng;
  auto y = samout::ops::linear(torch::randn({2, 8}), w.detach());
  EXPECT_FALSE(y.requires_grad());
}

}  // namespace
}  // namespace samout::ops
