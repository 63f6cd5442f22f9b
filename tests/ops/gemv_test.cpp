// Tests of samout/ops/gemv.h: the small-batch product against at::linear in double, over batch
// sizes, K with and without a K % 8 tail, N with and without a tail of W's 4-row blocks, with and
// without bias; its independence of the thread count; the cases that must go to at::linear; and
// ops::linear's choice between the two.
#include "samout/ops/gemv.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <string>

#include "samout/ops/linear.h"

namespace samout::ops {
namespace {

// Max |got - want| against 1e-5 of max |want| (and of 1, for outputs near zero).
void expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const auto g = got.to(torch::kDouble), w = want.to(torch::kDouble);
  const double err = (g - w).abs().max().item<double>();
  const double scale = std::max(1.0, w.abs().max().item<double>());
  EXPECT_LE(err, 1e-5 * scale) << what << ": max abs error " << err << ", scale " << scale;
}

torch::Tensor reference(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto xd = x.to(torch::kDouble), wd = w.to(torch::kDouble);
  return b.defined() ? at::linear(xd, wd, b.to(torch::kDouble)) : at::linear(xd, wd);
}

// Restores torch's thread count when a test changes it.
struct ThreadsGuard {
  int saved = at::get_num_threads();
  ~ThreadsGuard() { at::set_num_threads(saved); }
};

TEST(Gemv, MatchesLinearInDouble) {
  torch::manual_seed(0);
  for (int64_t K : {512, 13, 67, 130, 1})
    for (int64_t N : {1, 7, 513, 8460}) {
      const auto w = torch::randn({N, K});
      const auto bias = torch::randn({N});
      for (int64_t B : {1, 2, 3, 5})
        for (bool with_bias : {false, true}) {
          const auto x = torch::randn({B, K});
          const auto b = with_bias ? bias : torch::Tensor();
          const std::string what = "B=" + std::to_string(B) + " K=" + std::to_string(K) +
                                   " N=" + std::to_string(N) + (with_bias ? " bias" : "");
          ASSERT_TRUE(linear_rows_fast(x, w, b)) << what;
          expect_close(linear_rows(x, w, b), reference(x, w, b), what);
        }
    }
}

TEST(Gemv, SameBitsOnAnyThreadCount) {
  ThreadsGuard guard;
  torch::manual_seed(1);
  const auto w = torch::randn({8460, 512}), b = torch::randn({8460}), x = torch::randn({5, 512});
  at::set_num_threads(1);
  const auto one = linear_rows(x, w, b);
  for (int threads : {2, 3}) {
    at::set_num_threads(threads);
    EXPECT_TRUE(torch::equal(linear_rows(x, w, b), one)) << threads << " threads";
  }
}

TEST(Gemv, EachRowOfTheBatchAsIfAlone) {
  // A row's result does not depend on which other rows share the pass over W.
  torch::manual_seed(2);
  const auto w = torch::randn({513, 130}), x = torch::randn({8, 130});
  const auto all = linear_rows(x, w);
  for (int64_t r = 0; r < 8; ++r)
    EXPECT_TRUE(torch::equal(linear_rows(x.narrow(0, r, 1), w), all.narrow(0, r, 1))) << r;
}

TEST(Gemv, LeadingDimsAndStridedX) {
  torch::manual_seed(3);
  const auto w = torch::randn({77, 67}), b = torch::randn({77});
  const auto x3 = torch::randn({2, 3, 67});
  ASSERT_TRUE(linear_rows_fast(x3, w, b));
  expect_close(linear_rows(x3, w, b), reference(x3, w, b), "(2, 3, K)");
  const auto x1 = torch::randn({67});
  expect_close(linear_rows(x1, w, b), reference(x1, w, b), "(K,)");
  const auto wide = torch::randn({4, 200});
  const auto xs = wide.narrow(1, 5, 67);  // rows with a stride of 200
  ASSERT_TRUE(linear_rows_fast(xs, w, b));
  expect_close(linear_rows(xs, w, b), reference(xs, w, b), "strided x");
}

TEST(Gemv, RawKernelTakesAnyNumberOfRows) {
  torch::manual_seed(4);
  const auto w = torch::randn({37, 29}), b = torch::randn({37}), x = torch::randn({11, 29});
  auto y = torch::empty({11, 37});
  gemv_f32(x.data_ptr<float>(), 11, 29, w.data_ptr<float>(), 37, b.data_ptr<float>(),
           y.data_ptr<float>());
  expect_close(y, reference(x, w, b), "11 rows");
}

TEST(Gemv, NaNPropagates) {
  auto w = torch::ones({9, 16});
  auto x = torch::ones({2, 16});
  x[1][3] = std::numeric_limits<float>::quiet_NaN();
  const auto y = linear_rows(x, w);
  EXPECT_FALSE(torch::isnan(y[0]).any().item<bool>());
  EXPECT_TRUE(torch::isnan(y[1]).all().item<bool>());
}

TEST(Gemv, OtherCasesGoToLinear) {
  torch::manual_seed(5);
  const auto w = torch::randn({33, 24}), b = torch::randn({33});
  // More rows than the fast path takes.
  const auto x9 = torch::randn({9, 24});
  EXPECT_FALSE(linear_rows_fast(x9, w, b));
  expect_close(linear_rows(x9, w, b), reference(x9, w, b), "9 rows");
  // Double, and a transposed (non-contiguous) weight.
  const auto xd = torch::randn({2, 24}, torch::kDouble);
  EXPECT_FALSE(linear_rows_fast(xd, w.to(torch::kDouble), b.to(torch::kDouble)));
  expect_close(linear_rows(xd, w.to(torch::kDouble), b.to(torch::kDouble)), reference(xd, w, b),
               "double");
  const auto wt = torch::randn({24, 33}).t();
  const auto x2 = torch::randn({2, 24});
  EXPECT_FALSE(linear_rows_fast(x2, wt, b));
  expect_close(linear_rows(x2, wt, b), reference(x2, wt, b), "transposed weight");
  // Autograd: the product must be recorded, so at::linear runs and gradients flow.
  const auto wg = w.clone().requires_grad_(true);
  EXPECT_FALSE(linear_rows_fast(x2, wg, b));
  linear_rows(x2, wg, b).sum().backward();
  ASSERT_TRUE(wg.grad().defined());
  expect_close(wg.grad(), x2.sum(0).expand({33, 24}), "dL/dw");
  {
    torch::NoGradGuard no_grad;  // nothing recorded: the fast path is fine again
    EXPECT_TRUE(linear_rows_fast(x2, wg, b));
  }
  // Shape errors are at::linear's.
  EXPECT_THROW(linear_rows(torch::randn({2, 23}), w, b), c10::Error);
}

TEST(Gemv, LinearTakesItUnlessAtLinearOnly) {
  // ops::linear sends a few fp32 rows to the GEMV; under AtLinearOnlyGuard (bench_generate's
  // baseline) to at::linear, and the guards nest.
  torch::manual_seed(6);
  const auto w = torch::randn({300, 512}), b = torch::randn({300}), x = torch::randn({1, 512});
  EXPECT_TRUE(torch::equal(linear(x, w, b), linear_rows(x, w, b)));
  {
    AtLinearOnlyGuard outer;
    {
      AtLinearOnlyGuard inner;
      EXPECT_TRUE(torch::equal(linear(x, w, b), at::linear(x, w, b)));
    }
    EXPECT_TRUE(torch::equal(linear(x, w, b), at::linear(x, w, b)));
  }
  EXPECT_TRUE(torch::equal(linear(x, w, b), linear_rows(x, w, b)));
  // The two paths differ in rounding here, so the checks above tell them apart.
  EXPECT_FALSE(torch::equal(linear_rows(x, w, b), at::linear(x, w, b)));
}

TEST(Gemv, ReportsItsKernel) {
#if defined(__x86_64__)
  EXPECT_EQ(gemv_has_avx2(), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
#else
  EXPECT_FALSE(gemv_has_avx2());
#endif
}

}  // namespace
}  // namespace samout::ops
