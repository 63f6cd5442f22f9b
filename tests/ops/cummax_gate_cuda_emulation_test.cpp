// The CUDA kernels of cummax_gate, run on the CPU. cummax_gate.cu maps blocks and threads onto the
// per-thread functions of cummax_scan_cuda.cuh; this test runs those very functions over an
// emulated grid (every block and thread of every launch, launches in stream order, the same chunk
// plans, grids, vector/scalar dispatch and fixed-order block sums), on CPU tensors of the kernels'
// dtypes, and checks the results
//   - against the composite reference (cummax_gate_composite, autograd in double), and
//   - against the fused CPU kernel with cummax_gate_cuda_test's tolerances (what the GPU test will
//     ask of the real kernels),
// on cummax_gate_cuda_test's shapes (ties, NaN, carried state, strided y, T = 1, long T, odd d) in
// fp32, bf16 and fp64, at several chunk counts (one chunk, an H200's plan, the most chunks) and
// along both the 16-byte and the scalar path. Also: the forward-order owner walk against
// cummax_scan.h's reverse pass, the chunk plans (fixed point, one wave at the benchmark shapes), the
// grid covering every (batch row, chunk, channel group) once, and thread order not mattering within
// a launch (no thread reads what another writes).
//
// What it cannot check, left to cummax_gate_cuda_test on a GPU: nvcc's code for the same functions
// (FMA contraction, the 16-byte accesses), warp shuffles, shared memory, launch limits, occupancy
// queries, and concurrency.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <ostream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "gate_compare.h"
#include "samout/ops/cummax_gate.h"
#include "samout/ops/cummax_scan_cuda.cuh"

namespace samout::ops {
namespace {

using namespace gate_cuda;  // NOLINT: the test exercises this namespace throughout

// ---- The emulated device ------------------------------------------------------------------------

// ---- The kernels as compiled: ptxas -v's figures (cmake/ptxas_report.sh) ------------------------

struct KernelFigures {
  int registers = -1, smem = 0, stack = 0, spill = 0;
};

// "output" or "chunk", dtype, VEC -> figures, from every <build>/kernel_resources/*.txt; empty when
// the build has no CUDA kernels.
using KernelKey = std::tuple<std::string, torch::ScalarType, int>;

std::map<KernelKey, KernelFigures> read_kernel_resources() {
  std::map<KernelKey, KernelFigures> found;
#ifdef SAMOUT_KERNEL_RESOURCES
  namespace fs = std::filesystem;
  if (!fs::is_directory(SAMOUT_KERNEL_RESOURCES)) return found;
  const std::regex entry(
      "Compiling entry function '.*?(output|chunk)_kernelI(f|d|N3c108BFloat16E)Li([0-9]+)E");
  const std::regex other_entry("Compiling entry function");
  const std::regex frame("([0-9]+) bytes stack frame, ([0-9]+) bytes spill stores");
  const std::regex used("Used ([0-9]+) registers");
  const std::regex smem("([0-9]+) bytes smem");
  for (const auto& file : fs::directory_iterator(SAMOUT_KERNEL_RESOURCES)) {
    std::ifstream in(file.path());
    std::string line;
    KernelFigures* cur = nullptr;
    std::smatch m;
    while (std::getline(in, line)) {
      if (std::regex_search(line, m, entry)) {
        const torch::ScalarType dt = m[2] == "f"   ? torch::kFloat
                                     : m[2] == "d" ? torch::kDouble
                                                   : torch::kBFloat16;
        cur = &found[{m[1], dt, std::stoi(m[3])}];
      } else if (std::regex_search(line, other_entry)) {
        cur = nullptr;
      } else if (cur && std::regex_search(line, m, frame)) {
        cur->stack = std::stoi(m[1]);
        cur->spill = std::stoi(m[2]);
      } else if (cur && std::regex_search(line, m, used)) {
        cur->registers = std::stoi(m[1]);
        if (std::regex_search(line, m, smem)) cur->smem = std::stoi(m[1]);
      }
    }
  }
#endif
  return found;
}

const std::map<KernelKey, KernelFigures>& kernel_resources() {
  static const auto figures = read_kernel_resources();
  return figures;
}

// Resident blocks of kThreads threads per SM on sm_90 (H100, H200), as the CUDA occupancy
// calculator counts them: registers allocated per warp in units of 256 and warps in groups of 4
// out of 64K registers; at most 64 warps and 32 blocks; 228 KiB of shared memory, 1 KiB of it
// reserved per block.
int sm90_blocks_per_sm(int registers, int smem) {
  constexpr int kRegsPerSm = 65536, kMaxWarps = 64, kMaxBlocks = 32, kSmemPerSm = 228 * 1024;
  const int warps_per_block = kThreads / kWarp;
  const int regs_per_warp = (registers * kWarp + 255) / 256 * 256;
  const int warps_by_regs = kRegsPerSm / regs_per_warp / 4 * 4;
  const int by_regs = warps_by_regs / warps_per_block;
  const int by_smem = kSmemPerSm / (smem + 1024);
  return std::min({by_regs, by_smem, kMaxWarps / warps_per_block, kMaxBlocks});
}

// The threads an H200 (132 SMs) holds at once for the output and chunk kernels of one dtype and
// vector width, as cummax_gate.cu's resident_threads asks the runtime: the smaller occupancy of
// the two. Without a CUDA build (no figures), 2 blocks per SM.
int64_t h200_resident(torch::ScalarType dtype, int vec) {
  const auto& r = kernel_resources();
  const auto out = r.find({"output", dtype, vec}), chunk = r.find({"chunk", dtype, vec});
  if (out == r.end() || chunk == r.end()) return 132 * kThreads * 2;
  return 132 * kThreads *
         std::min(sm90_blocks_per_sm(out->second.registers, out->second.smem),
                  sm90_blocks_per_sm(chunk->second.registers, chunk->second.smem));
}

struct Config {
  const char* name;
  int64_t resident;     // threads the emulated GPU holds at once; 0: h200_resident
  bool vector_forward;  // take the 16-byte path when can_vectorize allows it
  bool vector_backward;
  bool reverse_threads;  // run each launch's blocks and threads in reverse order
};

// One chunk (a GPU far smaller than the work); an H200 on both paths; the most chunks the plan
// allows; mixed paths with the threads reversed.
const Config kConfigs[] = {
    {"one_chunk", 1, true, true, false},
    {"h200", 0, true, true, false},
    {"h200_scalar", 0, false, false, false},
    {"most_chunks", int64_t{1} << 40, true, true, false},
    {"mixed_paths_reversed", int64_t{1} << 40, true, false, true},
};

// Calls body(block, thread, has_work, work) for every thread of every block of gm: in launch order,
// or reversed.
template <typename F>
void for_each_thread(const GridMap& gm, bool reverse, F&& body) {
  for (int64_t i = 0; i < gm.blocks; ++i) {
    const int64_t blk = reverse ? gm.blocks - 1 - i : i;
    for (int j = 0; j < kThreads; ++j) {
      const int th = reverse ? kThreads - 1 - j : j;
      Work w;
      const bool has = work_of(gm, blk, th, w);
      body(blk, th, has, w);
    }
  }
}

// chunk_kernel's block_partials: a __shfl_down_sync tree within each warp (a lane past the warp's
// end reads its own value; only lane 0's result is used), then the warps in order.
template <typename acc_t>
AlphaSums<acc_t> emulate_block_partials(std::vector<AlphaSums<acc_t>> s) {
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const auto prev = s;
    for (int l = 0; l < kThreads; ++l) {
      const int src = (l % kWarp) + off < kWarp ? l + off : l;
      for (int q = 0; q < 4; ++q) s[l].v[q] = prev[l].v[q] + prev[src].v[q];
    }
  }
  AlphaSums<acc_t> total{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
  for (int w = 0; w < kThreads / kWarp; ++w)
    for (int q = 0; q < 4; ++q) total.v[q] += s[w * kWarp].v[q];
  return total;
}

template <typename scalar_t>
GateArgs<scalar_t> gate_args(const torch::Tensor& y, const torch::Tensor& alphas, ChunkPlan plan) {
  return {y.data_ptr<scalar_t>(),
          alphas.data_ptr<scalar_t>(),
          y.size(0),
          y.size(1),
          y.size(2) / 3,
          y.stride(0),
          y.stride(1),
          plan.K,
          plan.L};
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// cummax_gate.cu's forward_impl: summaries (K > 1), then outputs; returns chunk_carry when saving.
template <typename scalar_t, int VEC>
torch::Tensor emulate_forward_impl(const torch::Tensor& y, const torch::Tensor& alphas,
                                   const torch::Tensor& state, torch::Tensor& out,
                                   torch::Tensor& last_m, bool save, int64_t resident,
                                   bool reverse) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  const Launch launch = forward_launch<VEC>(B, T, d, resident);
  const GateArgs<scalar_t> g = gate_args<scalar_t>(y, alphas, launch.plan);
  torch::Tensor summaries, chunk_carry;
  if (launch.plan.K > 1) {
    summaries = torch::full({B, launch.plan.K, d}, NAN, y.options());
    for_each_thread(launch.grid, reverse, [&](int64_t, int, bool has, const Work& w) {
      if (has) summary_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, summaries.data_ptr<scalar_t>());
    });
  }
  if (save) chunk_carry = torch::full({B, launch.plan.K, d}, NAN, y.options());
  for_each_thread(launch.grid, reverse, [&](int64_t, int, bool has, const Work& w) {
    if (has) {
      output_thread<scalar_t, VEC>(g, w.b, w.k, w.grp, ptr_or_null<scalar_t>(state),
                                   ptr_or_null<scalar_t>(summaries), out.data_ptr<scalar_t>(),
                                   save ? chunk_carry.data_ptr<scalar_t>() : nullptr,
                                   last_m.data_ptr<scalar_t>());
    }
  });
  return chunk_carry;
}

// cummax_gate.cu's backward_impl: chunk passes with per-block partials, then the carry pass and
// the finishing block.
template <typename scalar_t, int VEC>
void emulate_backward_impl(const torch::Tensor& grad_out, const torch::Tensor& y,
                           const torch::Tensor& alphas, const torch::Tensor& chunk_carry,
                           torch::Tensor& grad_y, torch::Tensor& grad_alphas, bool reverse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  const Launch launch = backward_launch<VEC>(B, T, d, chunk_carry.size(1));
  ASSERT_EQ(launch.plan.K, chunk_carry.size(1)) << "the backward must recover the forward's chunks";
  const GateArgs<scalar_t> g = gate_args<scalar_t>(y, alphas, launch.plan);
  const auto acc_opts = y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const int64_t nblocks = launch.grid.blocks;
  torch::Tensor partials = torch::full({nblocks, 4}, NAN, acc_opts);
  torch::Tensor sums = torch::full({2, B, launch.plan.K, d}, NAN, acc_opts);
  torch::Tensor owner = torch::full({B, launch.plan.K, d}, -7, y.options().dtype(torch::kInt));
  const ChunkRecords<acc_t> rec{sums[0].data_ptr<acc_t>(), sums[1].data_ptr<acc_t>(),
                                owner.data_ptr<int32_t>()};

  std::vector<AlphaSums<acc_t>> block(kThreads);
  int64_t current = -1;
  auto flush = [&] {
    if (current < 0) return;
    const AlphaSums<acc_t> p = emulate_block_partials(block);
    for (int q = 0; q < 4; ++q) partials.data_ptr<acc_t>()[current * 4 + q] = p.v[q];
  };
  for_each_thread(launch.grid, reverse, [&](int64_t blk, int th, bool has, const Work& w) {
    if (blk != current) {
      flush();
      current = blk;
    }
    block[th] = AlphaSums<acc_t>{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
    if (has) {
      block[th] = backward_chunk_thread<scalar_t, VEC>(
          g, w.b, w.k, w.grp, grad_out.data_ptr<scalar_t>(), chunk_carry.data_ptr<scalar_t>(),
          grad_y.data_ptr<scalar_t>(), rec);
    }
  });
  flush();

  // finish_kernel: the carry blocks, then the finishing block.
  const int64_t cb = carry_blocks(B, d, launch.plan.K);
  for (int64_t i = 0; i < cb * kThreads; ++i) {
    const int64_t idx = reverse ? cb * kThreads - 1 - i : i;
    if (idx < B * d) {
      carry_thread<scalar_t, acc_t>(T, d, launch.plan.K, rec.carried, rec.open_sum, rec.owner,
                                    grad_y.data_ptr<scalar_t>(), idx / d, idx % d);
    }
  }
  std::array<std::array<acc_t, kThreads>, 4> tree;
  for (int th = 0; th < kThreads; ++th) {
    const AlphaSums<acc_t> mine =
        strided_partial_sums(partials.data_ptr<acc_t>(), nblocks, th, kThreads);
    for (int q = 0; q < 4; ++q) tree[q][th] = mine.v[q];
  }
  for (int half = kThreads / 2; half > 0; half >>= 1)
    for (int th = 0; th < half; ++th)
      for (int q = 0; q < 4; ++q) tree[q][th] += tree[q][th + half];
  const AlphaSums<acc_t> total{{tree[0][0], tree[1][0], tree[2][0], tree[3][0]}};
  write_alpha_grads(total, grad_alphas.data_ptr<scalar_t>());
}

// ---- The emulated op (cummax_gate.cpp's fused path with cummax_gate.cu's dispatch) -------------

struct Outputs {
  torch::Tensor out, state, grad_y, grad_alphas;
};

// Forward (saving the carries) and backward given grad_out, plus an inference forward (nothing
// saved) whose out and state must equal the training forward's bitwise. Every output starts as
// NaN (owner as -7), so an entry no thread writes shows up in the comparisons.
template <typename scalar_t>
Outputs emulate_op(const torch::Tensor& y, const torch::Tensor& alphas, const torch::Tensor& state,
                   const torch::Tensor& grad_out, const Config& cfg) {
  const int64_t B = y.size(0), T = y.size(1), d = y.size(2) / 3;
  constexpr int V = kVecWidth<scalar_t>;
  auto forward = [&](torch::Tensor& out, torch::Tensor& last_m, bool save) {
    out = torch::full({B, T, d}, NAN, y.options());
    last_m = torch::full({B, d}, NAN, y.options());
    const bool vec =
        cfg.vector_forward &&
        can_vectorize<scalar_t>(d, y.stride(0), y.stride(1),
                                {y.data_ptr(), out.data_ptr(),
                                 state.defined() ? state.data_ptr() : nullptr, last_m.data_ptr()});
    const int64_t resident =
        cfg.resident > 0 ? cfg.resident : h200_resident(y.scalar_type(), vec ? V : 1);
    return vec ? emulate_forward_impl<scalar_t, V>(y, alphas, state, out, last_m, save, resident,
                                                   cfg.reverse_threads)
               : emulate_forward_impl<scalar_t, 1>(y, alphas, state, out, last_m, save, resident,
                                                   cfg.reverse_threads);
  };
  Outputs o;
  const torch::Tensor chunk_carry = forward(o.out, o.state, /*save=*/true);
  torch::Tensor infer_out, infer_state;
  EXPECT_FALSE(forward(infer_out, infer_state, /*save=*/false).defined());
  EXPECT_TRUE(torch::equal(infer_out.nan_to_num(7), o.out.nan_to_num(7))) << "inference out";
  EXPECT_TRUE(torch::equal(infer_state.nan_to_num(7), o.state.nan_to_num(7))) << "inference state";

  o.grad_y = torch::full({B, T, 3 * d}, NAN, y.options());
  o.grad_alphas = torch::full({5}, NAN, y.options());
  const bool vec =
      cfg.vector_backward && can_vectorize<scalar_t>(d, y.stride(0), y.stride(1),
                                                     {y.data_ptr(), grad_out.data_ptr(),
                                                      chunk_carry.data_ptr(), o.grad_y.data_ptr()});
  if (vec) {
    emulate_backward_impl<scalar_t, V>(grad_out, y, alphas, chunk_carry, o.grad_y, o.grad_alphas,
                                       cfg.reverse_threads);
  } else {
    emulate_backward_impl<scalar_t, 1>(grad_out, y, alphas, chunk_carry, o.grad_y, o.grad_alphas,
                                       cfg.reverse_threads);
  }
  return o;
}

Outputs emulate(const torch::Tensor& y, const torch::Tensor& alphas, const torch::Tensor& state,
                const torch::Tensor& grad_out, const Config& cfg) {
  Outputs o;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "emulate", [&] {
    o = emulate_op<scalar_t>(y, alphas, state, grad_out, cfg);
  });
  return o;
}

// ---- Inputs (as cummax_gate_cuda_test makes them) -----------------------------------------------

struct Case {
  int64_t B, T, d;
  bool with_state;  // a carried state on the same coarse grid as c, so c often ties with it
  bool strided;     // y is a view: rows 3d + 7 apart, batches T + 2 rows apart, offset 3
  bool nans;        // NaN in c (then the running max), in a and in b
  bool aligned_view = false;  // y is a view that keeps 16-byte rows: rows 3d + 16 apart, offset 8
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B" << c.B << "_T" << c.T << "_d" << c.d << (c.with_state ? "_state" : "")
            << (c.strided ? "_strided" : "") << (c.nans ? "_nan" : "")
            << (c.aligned_view ? "_alignedview" : "");
}

std::string dtype_name(torch::ScalarType t) {
  return t == torch::kFloat ? "fp32" : t == torch::kBFloat16 ? "bf16" : "fp64";
}

// The CPU kernel's dtype for the comparison cummax_gate_cuda_test makes: fp64 for fp64, else fp32.
torch::ScalarType reference_dtype(torch::ScalarType t) {
  return t == torch::kDouble ? torch::kDouble : torch::kFloat;
}

torch::Tensor tie_heavy(torch::IntArrayRef shape, torch::TensorOptions opts) {
  return torch::round(torch::randn(shape, opts) * 2).clamp(-4, 4) / 2;
}

torch::Tensor view_y(const torch::Tensor& base, const Case& c) {
  if (c.strided) return base.narrow(1, 1, c.T).narrow(2, 3, 3 * c.d);
  if (c.aligned_view) return base.narrow(1, 1, c.T).narrow(2, 8, 3 * c.d);
  return base;
}

struct Inputs {  // in fp64, every value representable in the tested dtype
  torch::Tensor base, alphas, state, grad_out;
};

Inputs make_inputs(const Case& c, torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  Inputs in;
  if (c.strided) {
    in.base = torch::randn({c.B, c.T + 2, 3 * c.d + 7}, opts);
  } else if (c.aligned_view) {
    in.base = torch::randn({c.B, c.T + 2, 3 * c.d + 16}, opts);
  } else {
    in.base = torch::randn({c.B, c.T, 3 * c.d}, opts);
  }
  auto y = view_y(in.base, c);
  y.narrow(2, 2 * c.d, c.d).copy_(tie_heavy({c.B, c.T, c.d}, opts));
  if (c.nans) {
    y.index_put_({0, c.T / 2, 2 * c.d + c.d / 2}, NAN);
    y.index_put_({c.B - 1, 0, 0}, NAN);
    y.index_put_({c.B - 1, c.T - 1, c.d}, NAN);
  }
  in.alphas = torch::tensor({0.3, -0.7, 1.1, 0.25, -1.5}, opts);
  if (c.with_state) in.state = tie_heavy({c.B, c.d}, opts);
  in.grad_out = torch::randn({c.B, c.T, c.d}, opts);
  for (torch::Tensor* t : {&in.base, &in.alphas, &in.state, &in.grad_out}) {
    if (t->defined()) *t = t->to(dtype).to(torch::kDouble);
  }
  return in;
}

// ---- Comparisons (gate_compare.h) -------------------------------------------------------------

using testing::expect_close;
using testing::Tol;
using testing::tol_for;

// sum |g * x| over the terms of each alpha's gradient (x = b, m, a, c, m), NaN terms left out.
torch::Tensor alpha_abs_sums(const Inputs& in, const Case& c) {
  auto y = view_y(in.base, c);
  auto g = in.grad_out.abs();
  auto a = y.narrow(2, 0, c.d), b = y.narrow(2, c.d, c.d), cc = y.narrow(2, 2 * c.d, c.d);
  torch::Tensor m;
  if (in.state.defined()) {
    auto ext = torch::cat({in.state.unsqueeze(1), cc}, /*dim=*/1);
    m = std::get<0>(torch::cummax(ext, /*dim=*/1)).narrow(1, 1, c.T);
  } else {
    m = std::get<0>(torch::cummax(cc, /*dim=*/1));
  }
  auto s = [&](const torch::Tensor& x) { return torch::nansum(g * x.abs()); };
  return torch::stack({s(b), s(m), s(a), s(cc), s(m)});
}

void expect_alphas_close(const torch::Tensor& got, const torch::Tensor& want,
                         const torch::Tensor& abs_sums, torch::ScalarType dtype,
                         const std::string& what) {
  const double rtol = dtype == torch::kBFloat16 ? 1.0 / 128 : 0.0;
  const double sum_tol = dtype == torch::kDouble ? 1e-13 : 1e-5;
  for (int k = 0; k < 5; ++k) {
    const double g = got[k].item<double>(), w = want[k].item<double>();
    SCOPED_TRACE(what + " dL/dalpha" + std::to_string(k + 1));
    EXPECT_EQ(std::isnan(g), std::isnan(w)) << "got " << g << ", want " << w;
    if (std::isnan(g) || std::isnan(w)) continue;
    EXPECT_LE(std::abs(g - w), rtol * std::abs(w) + sum_tol * abs_sums[k].item<double>())
        << "got " << g << ", want " << w;
  }
}

void expect_outputs_close(const Outputs& got, const Outputs& want, const Case& c,
                          torch::ScalarType dtype, const torch::Tensor& abs_sums,
                          const std::string& what) {
  const Tol tol = tol_for(dtype);
  expect_close(got.out, want.out, tol, what + " out");
  expect_close(got.state, want.state, Tol{0, 0}, what + " state");
  const char* names[3] = {" dL/da", " dL/db", " dL/dc"};
  for (int i = 0; i < 3; ++i) {
    expect_close(got.grad_y.narrow(2, i * c.d, c.d), want.grad_y.narrow(2, i * c.d, c.d), tol,
                 what + names[i]);
  }
  expect_alphas_close(got.grad_alphas, want.grad_alphas, abs_sums, dtype, what);
}

// The composite (torch.cummax and autograd) in fp64.
Outputs composite_fp64(const Inputs& in, const Case& c) {
  auto leaf = in.base.clone().requires_grad_(true);
  auto alphas = in.alphas.clone().requires_grad_(true);
  auto r = cummax_gate_composite(view_y(leaf, c), alphas, in.state);
  auto g = torch::autograd::grad({r.out}, {leaf, alphas}, {in.grad_out});
  return {r.out.detach(), r.state, view_y(g[0], c), g[1]};
}

// The fused CPU kernel in `dtype` (what cummax_gate_cuda_test compares the CUDA kernels with).
Outputs cpu_kernel(const Inputs& in, const Case& c, torch::ScalarType dtype) {
  auto leaf = in.base.to(dtype).requires_grad_(true);
  auto alphas = in.alphas.to(dtype).requires_grad_(true);
  auto r = cummax_gate(view_y(leaf, c), alphas, in.state.defined() ? in.state.to(dtype) : in.state,
                       GateImpl::kFused);
  auto g = torch::autograd::grad({r.out}, {leaf, alphas}, {in.grad_out.to(dtype)});
  return {r.out.detach(), r.state, view_y(g[0], c), g[1]};
}

// ---- The op, emulated, on cummax_gate_cuda_test's cases -----------------------------------------

using Param = std::tuple<Case, torch::ScalarType>;

class EmulatedCudaOp : public ::testing::TestWithParam<Param> {};

TEST_P(EmulatedCudaOp, MatchesCompositeAndCpuKernel) {
  const auto [c, dtype] = GetParam();
  const Inputs in = make_inputs(c, dtype, /*seed=*/c.B * 100003 + c.T * 101 + c.d + 7);
  const Outputs ref = composite_fp64(in, c);
  const Outputs cpu = cpu_kernel(in, c, reference_dtype(dtype));
  const torch::Tensor abs_sums = alpha_abs_sums(in, c);

  const auto base = in.base.to(dtype);  // y is a view of it, as the op sees it
  const auto y = view_y(base, c);
  const auto alphas = in.alphas.to(dtype);
  const auto state = in.state.defined() ? in.state.to(dtype) : in.state;
  const auto grad_out = in.grad_out.to(dtype);
  Outputs first;
  for (const Config& cfg : kConfigs) {
    SCOPED_TRACE(cfg.name);
    const Outputs emu = emulate(y, alphas, state, grad_out, cfg);
    expect_outputs_close(emu, ref, c, dtype, abs_sums, "vs composite fp64:");
    expect_outputs_close(emu, cpu, c, dtype, abs_sums, "vs CPU kernel:");
    if (!first.out.defined()) {
      first = emu;
    } else {
      // out and the state do not depend on the chunking or the path: a max is exact, and out's
      // formula is the same per element.
      EXPECT_TRUE(torch::equal(emu.out.nan_to_num(7), first.out.nan_to_num(7))) << "out differs";
      EXPECT_TRUE(torch::equal(emu.state.nan_to_num(7), first.state.nan_to_num(7)));
    }
  }
}

// cummax_gate_cuda_test's cases, plus a view of y that keeps 16-byte rows (the vector path on a
// non-contiguous y) and a T that no chunk length divides.
INSTANTIATE_TEST_SUITE_P(
    CudaTestCases, EmulatedCudaOp,
    ::testing::Combine(
        ::testing::Values(Case{1, 1, 1, false, false, false}, Case{2, 1, 5, true, false, false},
                          Case{3, 7, 13, true, true, false}, Case{2, 33, 67, true, true, true},
                          Case{5, 100, 100, false, false, false},
                          Case{4, 50, 300, true, false, false}, Case{8, 16, 512, true, true, false},
                          Case{3, 64, 257, false, false, true},
                          Case{1, 4097, 40, true, true, false},
                          Case{2, 65536, 8, false, false, false},
                          Case{3, 333, 24, true, true, false, /*aligned_view=*/true},
                          Case{2, 1000, 16, true, false, false}),
        ::testing::Values(torch::kFloat, torch::kBFloat16, torch::kDouble)),
    [](const auto& info) {
      std::ostringstream os;
      os << std::get<0>(info.param) << "_" << dtype_name(std::get<1>(info.param));
      return os.str();
    });

// The 16-byte path is taken exactly where every row is 16-byte aligned.
TEST(EmulatedCudaDispatch, VectorPathWhereRowsAreAligned) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  auto vec = [](const torch::Tensor& y) {
    bool r = false;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "vec", [&] {
      r = can_vectorize<scalar_t>(y.size(2) / 3, y.stride(0), y.stride(1), {y.data_ptr()});
    });
    return r;
  };
  EXPECT_TRUE(vec(torch::zeros({2, 5, 3 * 512}, f32)));
  EXPECT_TRUE(vec(torch::zeros({2, 5, 3 * 512}, bf16)));
  EXPECT_TRUE(vec(torch::zeros({2, 5, 3 * 100}, f32)));    // d = 100: 4 | d
  EXPECT_FALSE(vec(torch::zeros({2, 5, 3 * 100}, bf16)));  // 8 does not divide 100
  EXPECT_FALSE(vec(torch::zeros({2, 5, 3 * 13}, f32)));
  EXPECT_FALSE(vec(torch::zeros({2, 5, 3 * 67 + 7}, f32).narrow(2, 3, 3 * 67)));
  EXPECT_TRUE(vec(torch::zeros({2, 5, 3 * 24 + 16}, f32).narrow(2, 8, 3 * 24)));
  EXPECT_FALSE(vec(torch::zeros({2, 5, 3 * 24 + 16}, f32).narrow(2, 1, 3 * 24)));  // offset 4 B
  EXPECT_FALSE(vec(torch::zeros({2, 5, 3 * 24 + 1}, f32).narrow(2, 0, 3 * 24)));   // row stride
}

// ---- The pieces ---------------------------------------------------------------------------------

// The forward-order owner walk (chunk_kernel's) against cummax_scan.h's reverse pass: the same dc
// (stretch sums), G_k and full_k, on sequences with many ties and NaNs and states of -inf, a number
// or NaN. gm are small integers, so sums in any order are exact.
TEST(EmulatedCudaPieces, OwnerWalkMatchesTheReversePass) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> val(0, 5), len(1, 40), gmd(-9, 9), pct(0, 99);
  int cases = 0;
  for (int it = 0; it < 4000; ++it) {
    const int n = len(rng);
    std::vector<double> c(n), m(n), gm(n), dc_ref(n), dc(n, -1e300);
    for (int t = 0; t < n; ++t) {
      c[t] = pct(rng) < 5 ? NAN : val(rng);
      gm[t] = gmd(rng);
    }
    const int kind = it % 3;
    const double carry = kind == 0 ? -INFINITY : kind == 1 ? double(val(rng)) : NAN;
    scan::chunk_forward(c.data(), n, carry, m.data());
    bool full_ref = false;
    const double G_ref = scan::carry_prefix_sum(c.data(), m.data(), gm.data(), n, &full_ref);
    scan::chunk_backward(c.data(), m.data(), gm.data(), n, 0.0, dc_ref.data());

    OwnerWalk<double> w = owner_walk_start<double>();
    for (int t = 0; t < n; ++t) {
      int32_t pos;
      double v = 0;
      dc[t] = owner_walk_step(w, t, scan::is_argmax(c[t], m[t]), 0.0, gm[t], pos, v);
      if (pos >= 0) dc[pos] = v;
    }
    if (owner_walk_needs_rewrite(w, n - 1)) dc[w.owner] = w.open;
    ASSERT_EQ(w.owner < 0, full_ref) << "case " << it;
    ASSERT_TRUE(G_ref == w.carried || (std::isnan(G_ref) && std::isnan(w.carried))) << it;
    for (int t = 0; t < n; ++t) {
      ASSERT_TRUE(dc[t] == dc_ref[t] || (std::isnan(dc[t]) && std::isnan(dc_ref[t])))
          << "case " << it << " t " << t << ": " << dc[t] << " vs " << dc_ref[t];
    }
    if (w.owner >= 0) {
      const double want = dc_ref[w.owner];
      ASSERT_TRUE(w.open == want || (std::isnan(w.open) && std::isnan(want))) << it;
    }
    ++cases;
  }
  EXPECT_EQ(cases, 4000);
}

// plan_for_chunks is a fixed point (the backward recovers the forward's L from K), its chunks
// cover T exactly, and no more chunks are made than asked for.
TEST(EmulatedCudaPieces, ChunkPlansAreFixedPoints) {
  for (int64_t T = 1; T <= 2100; T += (T < 200 ? 1 : 37)) {
    for (int64_t K = 1; K <= kMaxChunks + 3; ++K) {
      const ChunkPlan p = plan_for_chunks(T, K);
      ASSERT_LE(p.K, K);
      ASSERT_EQ(p.L % kChunkAlign, 0);
      ASSERT_LT((p.K - 1) * p.L, T);
      ASSERT_GE(p.K * p.L, T);
      const ChunkPlan q = plan_for_chunks(T, p.K);
      ASSERT_EQ(q.K, p.K) << "T " << T << " K " << K;
      ASSERT_EQ(q.L, p.L) << "T " << T << " K " << K;
    }
  }
}

// A traced call's chunking, ceil(T / kTracedChunkLength), is one the kernels keep for every T.
TEST(EmulatedCudaPieces, TracedChunkingsAreFixedPoints) {
  for (int64_t T = 1; T <= 40000; T += (T < 600 ? 1 : 97)) {
    const int64_t K = ceil_div(T, kTracedChunkLength);
    ASSERT_EQ(plan_for_chunks(T, K).K, K) << "T " << T;
  }
}

// The occupancy model against figures of the CUDA occupancy calculator for 128-thread blocks on
// sm_90.
TEST(KernelResources, Sm90OccupancyModel) {
  EXPECT_EQ(sm90_blocks_per_sm(64, 0), 8);
  EXPECT_EQ(sm90_blocks_per_sm(128, 64), 4);
  EXPECT_EQ(sm90_blocks_per_sm(129, 64), 3);  // 136 a thread once rounded per warp
  EXPECT_EQ(sm90_blocks_per_sm(168, 0), 3);
  EXPECT_EQ(sm90_blocks_per_sm(169, 0), 2);
  EXPECT_EQ(sm90_blocks_per_sm(255, 0), 2);
  EXPECT_EQ(sm90_blocks_per_sm(32, 0), 16);         // the warp limit: 64 warps
  EXPECT_EQ(sm90_blocks_per_sm(32, 48 * 1024), 4);  // the shared-memory limit
}

// Every output and chunk kernel the build compiled is in ptxas' report, with no spill and no stack
// frame (CI's -warn-spills -Werror would fail the build otherwise; a stack frame is local memory
// too), and the plan the emulation checks uses their occupancy.
TEST(KernelResources, EveryGateKernelIsReported) {
  const auto& r = kernel_resources();
  if (r.empty()) GTEST_SKIP() << "no ptxas report: this build has no CUDA kernels";
  for (const torch::ScalarType dt : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    const int vec = static_cast<int>(16 / c10::elementSize(dt));
    for (const int v : {vec, 1}) {
      for (const char* kernel : {"output", "chunk"}) {
        SCOPED_TRACE(std::string(kernel) + "_kernel " + dtype_name(dt) + " VEC " +
                     std::to_string(v));
        const auto it = r.find({kernel, dt, v});
        ASSERT_NE(it, r.end());
        EXPECT_GT(it->second.registers, 0);
        EXPECT_EQ(it->second.spill, 0);
        EXPECT_EQ(it->second.stack, 0);
        const int blocks = sm90_blocks_per_sm(it->second.registers, it->second.smem);
        EXPECT_GE(blocks, 2);
        EXPECT_LE(h200_resident(dt, v), int64_t{132} * kThreads * blocks);
      }
    }
  }
}

// At the benchmark shapes on an H200 the grid is one wave that fills at least 85% of the threads
// the GPU holds (all SMs busy, none waiting for a second wave).
TEST(EmulatedCudaPieces, BenchmarkShapesFillOneWave) {
  struct Shape {
    int64_t B, T, d;
  };
  for (const Shape s : {Shape{32, 1024, 512}, Shape{4, 16384, 512}}) {
    for (const torch::ScalarType dt : {torch::kFloat, torch::kBFloat16}) {
      const int64_t resident = h200_resident(dt, dt == torch::kFloat ? 4 : 8);
      const Launch l = dt == torch::kFloat ? forward_launch<4>(s.B, s.T, s.d, resident)
                                           : forward_launch<8>(s.B, s.T, s.d, resident);
      const int64_t threads = l.grid.blocks * kThreads;
      SCOPED_TRACE(std::to_string(s.B) + "x" + std::to_string(s.T) + " " + dtype_name(dt) + ": K " +
                   std::to_string(l.plan.K) + ", L " + std::to_string(l.plan.L) + ", " +
                   std::to_string(l.grid.blocks) + " blocks");
      EXPECT_LE(threads, resident);
      EXPECT_GE(threads, 0.85 * resident);
    }
  }
}

// Every (batch row, chunk, channel group) belongs to exactly one thread of the grid.
TEST(EmulatedCudaPieces, GridCoversEveryUnitOnce) {
  for (const int64_t groups : {1, 3, 5, 32, 33, 64, 128, 129, 300}) {
    for (const int64_t B : {1, 2, 7}) {
      for (const int64_t K : {1, 3, 64}) {
        const GridMap gm = make_grid(groups, B, K);
        std::vector<int> seen(groups * B * K, 0);
        for_each_thread(gm, false, [&](int64_t, int, bool has, const Work& w) {
          if (has) ++seen[(w.b * K + w.k) * groups + w.grp];
        });
        for (int s : seen) ASSERT_EQ(s, 1) << groups << " " << B << " " << K;
      }
    }
  }
}

}  // namespace
}  // namespace samout::ops
