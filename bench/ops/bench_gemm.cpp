// bench_gemm: gemm_cpu (our packed AVX2 sgemm) against at::mm (libtorch's BLAS, MKL) on the
// products one training step of SamOut runs, in the layouts it runs them, in the same run.
//
//   bench_gemm                        seed setting: M = 32 x 49 tokens, d = 512, V = 8460
//   bench_gemm --threads=1 --reps=5
//
// Per shape and layout: median time of --reps runs of each (after --warmup), GFLOP/s, the ratio
// at::mm / gemm_cpu, and the largest difference between the two results (relative to max |C|).
// Last line: the whole step's products (forward, dL/dx, dL/dw of every linear) summed, each side.
#include <gflags/gflags.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "samout/ops/gemm.h"

DEFINE_int64(tokens, 32 * 49, "M: tokens per step (batch x seq_len)");
DEFINE_int64(hidden, 512, "d");
DEFINE_int64(vocab_size, 8460, "V");
DEFINE_int64(layers, 8, "L (for the whole-step total)");
DEFINE_int32(threads, 0, "torch CPU threads (0 = torch's default)");
DEFINE_int32(reps, 10, "timed repetitions per case");
DEFINE_int32(warmup, 2, "untimed repetitions before them");

namespace {

using Clock = std::chrono::steady_clock;

template <class F>
double median_ms(F&& f) {
  for (int i = 0; i < FLAGS_warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < FLAGS_reps; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Case {
  std::string what;
  int64_t M, K, N;
  bool ta, tb;     // A / B given as a transposed view of a row-major matrix
  int64_t count;   // times per training step
};

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("gemm_cpu vs at::mm on SamOut's training products");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (FLAGS_threads > 0) torch::set_num_threads(FLAGS_threads);
  torch::manual_seed(0);
  const int64_t M = FLAGS_tokens, d = FLAGS_hidden, V = FLAGS_vocab_size, L = FLAGS_layers;
  // For y = x @ w^T with w (N, K): forward (M,K)@(K,N) with B = w.t(); dL/dx = dy @ w, (M,N)@(N,K);
  // dL/dw = dy^T @ x, (N,M)@(M,K) with A = dy.t().
  std::vector<Case> cases;
  auto add_linear = [&](const std::string& name, int64_t K, int64_t N, int64_t count) {
    cases.push_back({name + " fwd  x@w^T", M, K, N, false, true, count});
    cases.push_back({name + " dx   dy@w", M, N, K, false, false, count});
    cases.push_back({name + " dw   dy^T@x", N, M, K, true, false, count});
  };
  add_linear("combined d->3d", d, 3 * d, L);
  add_linear("ffn      d->d ", d, d, 3 * L);
  add_linear("head     d->V ", d, V, 1);

  std::printf("bench_gemm: M=%lld d=%lld V=%lld L=%lld, %d threads, AVX2 kernel: %s, median of %d\n",
              (long long)M, (long long)d, (long long)V, (long long)L, torch::get_num_threads(),
              samout::ops::gemm_cpu_has_avx2() ? "yes" : "no", FLAGS_reps);
  std::printf("%-28s %6s %6s %6s %10s %10s %9s %9s %8s %9s\n", "product", "M", "K", "N",
              "at::mm ms", "ours ms", "mm GF/s", "our GF/s", "ratio", "max diff");
  double total_mm = 0, total_ours = 0;
  for (const auto& c : cases) {
    const auto A = c.ta ? torch::randn({c.K, c.M}).t() : torch::randn({c.M, c.K});
    const auto B = c.tb ? torch::randn({c.N, c.K}).t() : torch::randn({c.K, c.N});
    auto C_mm = torch::empty({c.M, c.N}), C_ours = torch::empty({c.M, c.N});
    const double t_mm = median_ms([&] { at::mm_out(C_mm, A, B); });
    const double t_ours = median_ms([&] { samout::ops::gemm_cpu(A, B, C_ours, 0.0f); });
    const double diff =
        (C_mm - C_ours).abs().max().item<double>() / C_mm.abs().max().item<double>();
    const double gflop = 2.0 * c.M * c.K * c.N / 1e9;
    std::printf("%-28s %6lld %6lld %6lld %10.2f %10.2f %9.1f %9.1f %7.2fx %9.1e\n", c.what.c_str(),
                (long long)c.M, (long long)c.K, (long long)c.N, t_mm, t_ours, gflop / t_mm * 1e3,
                gflop / t_ours * 1e3, t_mm / t_ours, diff);
    total_mm += t_mm * c.count;
    total_ours += t_ours * c.count;
  }
  std::printf("one step's products: at::mm %.1f ms, gemm_cpu %.1f ms, ratio %.2fx\n", total_mm,
              total_ours, total_mm / total_ours);
  return 0;
}
