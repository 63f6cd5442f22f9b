// GradReducer and both communicators at two ranks, under a real mpirun (see CMakeLists.txt):
//   mpirun -np 2 build/bin/comm_test
//
// Every test that takes a backend runs three times:
//   mpi_cpu   the MPI communicator on CPU tensors (always);
//   mpi_cuda  the MPI communicator on CUDA tensors, staged through pinned host memory (--comm=mpi;
//             the ranks may share one GPU);
//   nccl      the NCCL communicator (one GPU per rank: NCCL refuses two ranks on one GPU).
// A backend this machine cannot run is skipped with the reason, on every rank alike.
//
// Expected values never come from the code under test: each rank's contribution is a function of
// the rank (rank_values), so every rank computes every other rank's part, and their sum, itself.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "samout/common/error.h"
#include "samout/dist/communicator.h"
#include "samout/dist/context.h"
#include "samout/dist/grad_reducer.h"

namespace samout::dist {
namespace {

DistContext& ctx() {
  static DistContext c;
  return c;
}

int rank() { return ctx().rank; }
int world() { return ctx().world; }

// ---- backends ----------------------------------------------------------------------------------

enum class Backend { kMpiCpu, kMpiCuda, kNccl };

std::string backend_name(Backend b) {
  switch (b) {
    case Backend::kMpiCpu:
      return "mpi_cpu";
    case Backend::kMpiCuda:
      return "mpi_cuda";
    case Backend::kNccl:
      return "nccl";
  }
  return "?";
}

void PrintTo(Backend b, std::ostream* os) { *os << backend_name(b); }  // gtest's messages

struct BackendEnv {
  std::string skip;  // why this machine cannot run the backend; empty when it can
  DistContext ctx;   // after select_device: the device and the communicator kind
  std::unique_ptr<Communicator> comm;
};

// One communicator per backend for the whole run (an NCCL communicator takes a second to set up).
std::map<Backend, std::unique_ptr<BackendEnv>>& envs() {
  static std::map<Backend, std::unique_ptr<BackendEnv>> m;
  return m;
}

BackendEnv& env_for(Backend b) {
  auto& slot = envs()[b];
  if (slot) return *slot;
  slot = std::make_unique<BackendEnv>();
  BackendEnv& e = *slot;
  e.ctx = ctx();
  std::string why;
  const bool cuda = torch::cuda::is_available();
  if (b != Backend::kMpiCpu && !cuda) {
    why = "no CUDA device (torch::cuda::is_available() is false)";
  } else if (b == Backend::kNccl && !nccl_compiled()) {
    why = "this build has no NCCL";
  } else {
    // The trainer's own choice (one GPU per local rank under NCCL; shared under --comm=mpi).
    try {
      select_device(e.ctx, b == Backend::kMpiCpu ? DeviceRequest::kCpu : DeviceRequest::kCuda,
                    b == Backend::kNccl ? CommRequest::kNccl : CommRequest::kMpi);
    } catch (const UsageError& err) {
      why = err.what();
    }
  }
  // Every rank takes the same decision, or one would wait in a collective the other skipped.
  int ok = why.empty() ? 1 : 0, all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all) {
    e.skip = why.empty() ? "another rank cannot run this backend" : why;
    return e;
  }
  e.comm = make_communicator(e.ctx, /*timeout_s=*/60.0);
  return e;
}

class Dist : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    ASSERT_EQ(world(), 2) << "run under mpirun -np 2";
    env_ = &env_for(GetParam());
    if (!env_->skip.empty()) GTEST_SKIP() << backend_name(GetParam()) << ": " << env_->skip;
  }
  Communicator& comm() { return *env_->comm; }
  torch::Device device() const { return env_->ctx.device; }

  BackendEnv* env_ = nullptr;
};

// ---- values every rank can compute for every rank ---------------------------------------------

torch::Tensor cpu_generator_randn(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randn({n}, gen, torch::kDouble);
}

// Rank q's contribution of n elements; `salt` tells calls apart. Integers in [-1000, 1000) for
// integral types, normal samples otherwise. On the CPU.
torch::Tensor rank_values(int64_t n, int q, torch::ScalarType dtype, uint64_t salt = 0) {
  const uint64_t seed = 7919 * salt + 101 * static_cast<uint64_t>(q) + 1;
  if (c10::isIntegralType(dtype, /*includeBool=*/false)) {
    auto gen = at::detail::createCPUGenerator(seed);
    return torch::randint(-1000, 1000, {n}, gen, torch::kLong).to(dtype);
  }
  return cpu_generator_randn(n, seed).to(dtype);
}

// The sum over ranks of rank_values, added in the dtype: with two ranks each element is a single
// addition, commutative and correctly rounded, so any reduction algorithm must give these bits.
torch::Tensor sum_over_ranks(int64_t n, torch::ScalarType dtype, uint64_t salt = 0) {
  auto s = rank_values(n, 0, dtype, salt);
  for (int q = 1; q < world(); ++q) s = s + rank_values(n, q, dtype, salt);
  return s;
}

// Exact for two ranks (see sum_over_ranks); bf16 NCCL sums may be computed in fp32 and rounded
// once, which is the same here, but allow one bf16 step in case a version rounds twice.
void expect_equal(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  auto g = got.cpu();
  if (want.scalar_type() == torch::kBFloat16) {
    EXPECT_TRUE(torch::allclose(g.to(torch::kFloat), want.to(torch::kFloat), 1e-2, 1e-2)) << what;
  } else {
    EXPECT_TRUE(torch::equal(g, want))
        << what << ": max |diff| "
        << (g.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
  }
}

std::vector<torch::ScalarType> dtypes_of(Backend b) {
  std::vector<torch::ScalarType> d = {torch::kFloat, torch::kDouble, torch::kInt, torch::kLong};
  if (b == Backend::kNccl) d.push_back(torch::kBFloat16);  // MPI has no bf16 sum
  return d;
}

// ---- communicators -----------------------------------------------------------------------------

// make_communicator follows select_device: MPI between CPU ranks, and never NCCL on the CPU.
TEST(CommChoice, MpiOnCpuAndNcclRefusedThere) {
  ASSERT_EQ(world(), 2) << "run under mpirun -np 2";
  DistContext c = ctx();
  select_device(c, DeviceRequest::kCpu, CommRequest::kAuto);
  EXPECT_EQ(c.comm, CommKind::kMpi);
  EXPECT_TRUE(c.device.is_cpu());
  auto comm = make_communicator(c, 60.0);
  EXPECT_EQ(comm->world(), 2);
  DistContext n = ctx();
  EXPECT_THROW(select_device(n, DeviceRequest::kCpu, CommRequest::kNccl), UsageError);
  // auto: the CPU and MPI without a GPU; with one GPU per local rank, GPU local_rank and NCCL.
  DistContext a = ctx();
  if (!torch::cuda::is_available()) {
    select_device(a, DeviceRequest::kAuto, CommRequest::kAuto);
    EXPECT_EQ(a.comm, CommKind::kMpi);
    EXPECT_TRUE(a.device.is_cpu());
  } else if (torch::cuda::device_count() >= static_cast<int64_t>(ctx().local_world)) {
    select_device(a, DeviceRequest::kAuto, CommRequest::kAuto);
    EXPECT_EQ(a.comm, CommKind::kNccl);
    EXPECT_EQ(a.device, torch::Device(torch::kCUDA, ctx().local_rank));
  }
}

TEST_P(Dist, CommKindMatchesBackend) {
  EXPECT_EQ(env_->ctx.comm, GetParam() == Backend::kNccl ? CommKind::kNccl : CommKind::kMpi);
  EXPECT_EQ(device().is_cuda(), GetParam() != Backend::kMpiCpu);
  EXPECT_EQ(comm().world(), 2);
}

TEST_P(Dist, AllReduceSumEveryDtypeAndAwkwardSize) {
  uint64_t salt = 0;
  for (auto dtype : dtypes_of(GetParam())) {
    for (int64_t n : {1, 7, 4099, (1 << 20) + 3}) {
      auto t = rank_values(n, rank(), dtype, ++salt).to(device());
      comm().allreduce_sum(t);
      expect_equal(t, sum_over_ranks(n, dtype, salt),
                   std::string(c10::toString(dtype)) + " n=" + std::to_string(n));
    }
  }
}

TEST_P(Dist, MpiRefusesBf16WithoutCommunicating) {
  if (GetParam() == Backend::kNccl) GTEST_SKIP() << "NCCL sums bf16";
  auto t = torch::ones({4}, torch::TensorOptions().dtype(torch::kBFloat16).device(device()));
  EXPECT_THROW(comm().allreduce_sum(t), c10::Error);
  // The communicator still pairs its collectives with the peer's afterwards.
  auto u = rank_values(5, rank(), torch::kFloat, 77).to(device());
  comm().allreduce_sum(u);
  expect_equal(u, sum_over_ranks(5, torch::kFloat, 77), "after the refusal");
}

// Buckets are views of one flat buffer, several in flight at once: each sum lands in its range and
// nowhere else (the tail that no bucket covers keeps this rank's values).
TEST_P(Dist, AsyncBucketsOfOneBufferTouchOnlyTheirRanges) {
  const int64_t n = 1000;
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 300}, {300, 301}, {301, 777}};
  auto flat = rank_values(n, rank(), torch::kFloat, 11).to(device());
  for (const auto& [b, e] : ranges) {
    comm().allreduce_sum_async(flat.narrow(0, b, e - b), "bucket");
    comm().progress();
  }
  EXPECT_GE(comm().wait_all(), 0.0);
  const auto want = sum_over_ranks(n, torch::kFloat, 11);
  const auto mine = rank_values(n, rank(), torch::kFloat, 11);
  expect_equal(flat.narrow(0, 0, 777), want.narrow(0, 0, 777), "bucketed ranges");
  expect_equal(flat.narrow(0, 777, n - 777), mine.narrow(0, 777, n - 777), "the uncovered tail");
}

// A blocking collective issued while asynchronous ones are pending pairs with the peer's same call.
TEST_P(Dist, BlockingCollectiveBetweenAsyncOnes) {
  auto a = rank_values(513, rank(), torch::kFloat, 21).to(device());
  auto b = rank_values(129, rank(), torch::kDouble, 22).to(device());
  auto c = rank_values(65, rank(), torch::kLong, 23).to(device());
  comm().allreduce_sum_async(a, "a");
  comm().broadcast(b, /*root=*/1);
  comm().allreduce_sum_async(c, "c");
  comm().wait_all();
  expect_equal(a, sum_over_ranks(513, torch::kFloat, 21), "async before");
  expect_equal(b, rank_values(129, 1, torch::kDouble, 22), "broadcast between");
  expect_equal(c, sum_over_ranks(65, torch::kLong, 23), "async after");
}

TEST_P(Dist, BroadcastFromEachRoot) {
  for (int root = 0; root < world(); ++root) {
    for (auto dtype : {torch::kFloat, torch::kLong}) {
      for (int64_t n : {1, 1001}) {
        const uint64_t salt = 100 + 10 * root + n;
        auto t = rank_values(n, rank(), dtype, salt).to(device());
        comm().broadcast(t, root);
        expect_equal(t, rank_values(n, root, dtype, salt),
                     "root " + std::to_string(root) + " n=" + std::to_string(n));
      }
    }
  }
}

// Rank r owns block r; everything else starts as garbage and must be overwritten by its owner's
// block, while the rank's own block stays as it was.
TEST_P(Dist, AllGatherBlocks) {
  for (auto dtype : {torch::kFloat, torch::kLong}) {
    for (int64_t k : {1, 5, 4097}) {
      const uint64_t salt = 200 + k;
      auto flat = torch::full({world() * k}, -12345, torch::TensorOptions().dtype(dtype));
      flat.narrow(0, rank() * k, k).copy_(rank_values(k, rank(), dtype, salt));
      flat = flat.to(device());
      comm().all_gather(flat);
      for (int q = 0; q < world(); ++q)
        expect_equal(flat.narrow(0, q * k, k), rank_values(k, q, dtype, salt),
                     "block " + std::to_string(q) + " k=" + std::to_string(k));
    }
  }
}

// All-gather and broadcast only move data: every dtype, MPI's too (it has no bf16 or fp16 type),
// bit for bit. Rank r's block is rank_values of rank r, which every rank computes itself.
TEST_P(Dist, AllGatherAndBroadcastMoveEveryDtypeBitForBit) {
  for (auto dtype : {torch::kBFloat16, torch::kHalf, torch::kBool, torch::kByte, torch::kShort,
                     torch::kFloat, torch::kDouble}) {
    const std::string name = c10::toString(dtype);
    const auto values = [&](int64_t n, int q, uint64_t salt) {
      auto v = rank_values(n, q, torch::kDouble, salt);
      if (dtype == torch::kBool) return v.gt(0);
      return (dtype == torch::kByte ? v.abs() * 50 : v * 50).to(dtype);
    };
    for (int64_t k : {1, 3, 2049}) {
      const uint64_t salt = 1000 + k;
      auto flat = torch::zeros({world() * k}, torch::TensorOptions().dtype(dtype));
      flat.narrow(0, rank() * k, k).copy_(values(k, rank(), salt));
      flat = flat.to(device());
      comm().all_gather(flat);
      const auto got = flat.cpu();
      for (int q = 0; q < world(); ++q)
        EXPECT_TRUE(torch::equal(got.narrow(0, q * k, k), values(k, q, salt)))
            << name << " all-gather, block " << q << " k=" << k;
      auto t = values(k, rank(), salt + 1).to(device());
      comm().broadcast(t, /*root=*/1);
      EXPECT_TRUE(torch::equal(t.cpu(), values(k, 1, salt + 1))) << name << " broadcast k=" << k;
    }
  }
}

// Parts of any size, empty ones too; only this rank's part is defined afterwards, and it is the sum
// over ranks of that part. Several in flight on views of one buffer, between all-reduces.
TEST_P(Dist, ReduceScatterUnequalPartsOfOneBuffer) {
  uint64_t salt = 1100;
  for (auto dtype : dtypes_of(GetParam())) {
    for (const auto& counts : std::vector<std::vector<int64_t>>{
             {3, 5}, {0, 7}, {7, 0}, {1, 1}, {4096, 4099}, {1 << 18, 3}}) {
      const std::string name = std::string(c10::toString(dtype)) + " parts " +
                               std::to_string(counts[0]) + ", " + std::to_string(counts[1]);
      const int64_t n = counts[0] + counts[1];
      const int64_t offset = rank() == 0 ? 0 : counts[0];
      // [all-reduced head | reduce-scattered middle | all-reduced tail] of one buffer.
      auto flat = rank_values(n + 10, rank(), dtype, ++salt).to(device());
      comm().allreduce_sum_async(flat.narrow(0, 0, 4), "head");
      comm().reduce_scatter_sum_async(flat.narrow(0, 4, n), counts, "middle");
      comm().allreduce_sum_async(flat.narrow(0, 4 + n, 6), "tail");
      comm().wait_all();
      const auto want = sum_over_ranks(n + 10, dtype, salt);
      expect_equal(flat.narrow(0, 4 + offset, counts[rank()]),
                   want.narrow(0, 4 + offset, counts[rank()]), name);
      expect_equal(flat.narrow(0, 0, 4), want.narrow(0, 0, 4), name + ": the head");
      expect_equal(flat.narrow(0, 4 + n, 6), want.narrow(0, 4 + n, 6), name + ": the tail");
    }
  }
}

// bytes_sent: the ring algorithms' bytes per rank, the same on every rank.
TEST_P(Dist, BytesSentFollowTheRingConvention) {
  const double before = comm().bytes_sent();
  auto t = torch::zeros({1000}, torch::TensorOptions(device()));  // 4000 bytes
  comm().allreduce_sum(t);                                        // 2 (W-1)/W 4000 = 4000
  EXPECT_DOUBLE_EQ(comm().bytes_sent() - before, 4000);
  comm().reduce_scatter_sum_async(t, {600, 400});  // (W-1)/W 4000 = 2000
  comm().wait_all();
  EXPECT_DOUBLE_EQ(comm().bytes_sent() - before, 6000);
  comm().all_gather(t);  // 2000
  EXPECT_DOUBLE_EQ(comm().bytes_sent() - before, 8000);
  comm().broadcast(t, 0);  // 4000
  EXPECT_DOUBLE_EQ(comm().bytes_sent() - before, 12000);
}

// ---- GradReducer: layout -----------------------------------------------------------------------

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::vector<torch::Tensor> make_params(const std::vector<std::vector<int64_t>>& shapes,
                                       torch::Device device, uint64_t salt) {
  std::vector<torch::Tensor> params;
  for (size_t i = 0; i < shapes.size(); ++i) {
    // The same values on every rank (they are weights), different per parameter.
    params.push_back(rank_values(numel_of(shapes[i]), 0, torch::kFloat, salt + i)
                         .view(shapes[i])
                         .to(device)
                         .requires_grad_(true));
  }
  return params;
}

// The documented layout: parameters in reverse registration order, each a view of the flat
// buffers, and a bucket closes as soon as it holds at least bucket_bytes / 4 elements (a parameter
// is never split), so that only the last bucket may be smaller.
void expect_layout(const GradReducer& reducer, const std::vector<torch::Tensor>& params,
                   int64_t bucket_bytes, const std::vector<torch::Tensor>& values) {
  const int64_t elems = std::max<int64_t>(1, bucket_bytes / 4);
  std::map<int64_t, int64_t> size_ending_at;  // reverse-order boundaries
  int64_t offset = 0;
  for (size_t j = params.size(); j-- > 0;) {
    const auto& p = params[j];
    EXPECT_EQ(p.data_ptr<float>(), reducer.flat_params().data_ptr<float>() + offset)
        << "param " << j;
    EXPECT_EQ(p.grad().data_ptr<float>(), reducer.flat_grads().data_ptr<float>() + offset)
        << "grad " << j;
    expect_equal(p.detach(), values[j], "param " + std::to_string(j) + " keeps its values");
    offset += p.numel();
    size_ending_at[offset] = p.numel();
  }
  EXPECT_EQ(reducer.numel(), offset);
  const auto ranges = reducer.bucket_ranges();
  ASSERT_EQ(static_cast<int64_t>(ranges.size()), reducer.num_buckets());
  ASSERT_FALSE(ranges.empty());
  EXPECT_EQ(ranges.front().first, 0);
  EXPECT_EQ(ranges.back().second, offset);
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto [b, e] = ranges[i];
    const std::string name = "bucket " + std::to_string(i) + " [" + std::to_string(b) + ", " +
                             std::to_string(e) + ") of " + std::to_string(elems) + " elements";
    if (i > 0) {
      EXPECT_EQ(b, ranges[i - 1].second) << name;
    }
    ASSERT_TRUE(size_ending_at.count(e)) << name << " ends inside a parameter";
    EXPECT_LT(e - size_ending_at[e] - b, elems) << name << " was full before its last parameter";
    if (i + 1 < ranges.size()) {
      EXPECT_GE(e - b, elems) << name << " closed early";
    }
  }
}

TEST_P(Dist, BucketLayoutHandWorked) {
  // Registration sizes 5, 3, 7, 2, 6; reversed 6, 2 | 7, 3 | 5 with buckets of 8 elements: the last
  // bucket (5) is uneven, the middle one (10) overshoots rather than split a parameter.
  auto params = make_params({{5}, {3}, {7}, {2}, {3, 2}}, device(), 300);
  GradReducer reducer(params, comm(), /*bucket_bytes=*/32, rank(), /*zero=*/false);
  using R = std::vector<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(reducer.bucket_ranges(), (R{{0, 8}, {8, 18}, {18, 23}}));
  EXPECT_EQ(reducer.numel(), 23);
  EXPECT_EQ(reducer.shard_begin(), 0);
  EXPECT_EQ(reducer.shard_end(), 23);
  EXPECT_EQ(reducer.flat_params().numel() % world(), 0);
  EXPECT_GE(reducer.flat_params().numel(), 23);
  EXPECT_TRUE(reducer.flat_params().device() == device());
}

TEST_P(Dist, BucketLayoutOverBucketSizes) {
  const std::vector<std::vector<int64_t>> shapes = {{1},     {17}, {3},  {8, 8}, {5},
                                                    {4, 32}, {2},  {33}, {7}};
  for (int64_t bytes : {1, 4, 8, 60, 256, 700, 4096}) {
    SCOPED_TRACE("bucket_bytes " + std::to_string(bytes));
    auto params = make_params(shapes, device(), 400);
    std::vector<torch::Tensor> values;
    for (const auto& p : params) values.push_back(p.detach().cpu().clone());
    GradReducer reducer(params, comm(), bytes, rank(), /*zero=*/false);
    expect_layout(reducer, params, bytes, values);
    if (bytes <= 4) {
      EXPECT_EQ(reducer.num_buckets(), static_cast<int64_t>(shapes.size()));
    }
    if (bytes == 4096) {
      EXPECT_EQ(reducer.num_buckets(), 1);
    }
  }
}

// ---- GradReducer: values after a real backward ---------------------------------------------------

// Parameter sizes (registration order) 24, 8, 64, 8, 40, 5: 149 elements that divide none of the
// bucket sizes below.
torch::nn::Sequential make_mlp(torch::Device device) {
  torch::manual_seed(7);  // the same weights on every rank
  torch::nn::Sequential m(torch::nn::Linear(3, 8), torch::nn::Tanh(), torch::nn::Linear(8, 8),
                          torch::nn::Tanh(), torch::nn::Linear(8, 5));
  m->to(device);
  return m;
}

// Rank q's loss at `step`: its own inputs, scaled by q + 1, so that the ranks' gradients differ.
torch::Tensor mlp_loss(torch::nn::Sequential& m, int q, int step, torch::Device device) {
  auto x = cpu_generator_randn(4 * 3, 500 + 10 * step + q).to(torch::kFloat).view({4, 3});
  return (m->forward(x.to(device)).pow(2) * static_cast<float>(q + 1)).sum();
}

TEST_P(Dist, ReducedGradientsAreSumsOverRanksWithUnevenLastBucket) {
  for (int64_t bytes : {192, 1, 1 << 20}) {
    SCOPED_TRACE("bucket_bytes " + std::to_string(bytes));
    auto m = make_mlp(device());
    auto params = m->parameters();
    const int steps = 2;
    // Every rank's gradients, from plain autograd before the reducer exists.
    std::vector<std::vector<torch::Tensor>> want(steps);
    for (int s = 0; s < steps; ++s) {
      for (int q = 0; q < world(); ++q) {
        auto g = torch::autograd::grad({mlp_loss(m, q, s, device())}, params);
        for (size_t i = 0; i < g.size(); ++i) {
          if (q == 0) {
            want[s].push_back(g[i].cpu());
          } else {
            want[s][i] = want[s][i] + g[i].cpu();
          }
        }
      }
    }
    GradReducer reducer(params, comm(), bytes, rank(), /*zero=*/false);
    if (bytes == 192) {  // reversed 5, 40, 8 | 64 | 8, 24 in buckets of 48: the last holds 32
      using R = std::vector<std::pair<int64_t, int64_t>>;
      EXPECT_EQ(reducer.bucket_ranges(), (R{{0, 53}, {53, 117}, {117, 149}}));
    }
    std::vector<int64_t> in_order(reducer.num_buckets());
    for (size_t i = 0; i < in_order.size(); ++i) in_order[i] = static_cast<int64_t>(i);
    for (int s = 0; s < steps; ++s) {
      reducer.zero_grad();
      reducer.begin_backward(/*sync=*/true);
      mlp_loss(m, rank(), s, device()).backward();
      reducer.finish();
      EXPECT_EQ(reducer.launch_order(), in_order);
      for (size_t i = 0; i < params.size(); ++i) {
        // Same kernels, one addition per element: equal up to the order of that addition.
        EXPECT_TRUE(torch::allclose(params[i].grad().cpu(), want[s][i], 1e-6, 1e-7))
            << "step " << s << " param " << i << ": max |diff| "
            << (params[i].grad().cpu() - want[s][i]).abs().max().item<double>();
      }
    }
  }
}

// ZeRO-1 reduce-scatters each bucket in parts cut at the shard boundary: whatever the buckets
// (one in all, one per parameter, some crossing the boundary), the shard holds the sums over ranks
// that plain autograd gives, and the launches are in bucket order during backward.
TEST_P(Dist, ZeroShardHoldsTheSumsWhateverTheBuckets) {
  for (int64_t bytes : {1, 100, 192, 1 << 20}) {
    SCOPED_TRACE("bucket_bytes " + std::to_string(bytes));
    auto m = make_mlp(device());
    auto params = m->parameters();
    std::vector<torch::Tensor> want;  // reverse registration order, flattened: the flat layout
    for (int q = 0; q < world(); ++q) {
      auto g = torch::autograd::grad({mlp_loss(m, q, 0, device())}, params);
      for (size_t i = 0; i < g.size(); ++i) {
        auto flat = g[g.size() - 1 - i].cpu().flatten();
        if (q == 0) {
          want.push_back(flat);
        } else {
          want[i] = want[i] + flat;
        }
      }
    }
    const auto all = torch::cat(want);
    GradReducer reducer(params, comm(), bytes, rank(), /*zero=*/true);
    reducer.zero_grad();
    reducer.begin_backward(/*sync=*/true);
    mlp_loss(m, rank(), 0, device()).backward();
    const auto during_backward = reducer.launch_order().size();
    reducer.finish();
    EXPECT_GE(during_backward, 1u) << "nothing was launched during backward";
    std::vector<int64_t> in_order(reducer.num_buckets());
    for (size_t i = 0; i < in_order.size(); ++i) in_order[i] = static_cast<int64_t>(i);
    EXPECT_EQ(reducer.launch_order(), in_order);
    const int64_t b = reducer.shard_begin(), e = reducer.shard_end();
    EXPECT_TRUE(torch::allclose(reducer.flat_grads().narrow(0, b, e - b).cpu(),
                                all.narrow(0, b, e - b), 1e-6, 1e-7))
        << "shard [" << b << ", " << e << ")";
  }
}

// Held (context parallelism): no bucket is launched during backward, every one by finish(), in
// bucket order, with the same sums.
TEST_P(Dist, HeldBucketsLaunchOnlyInFinish) {
  for (bool zero : {false, true}) {
    SCOPED_TRACE(zero ? "zero" : "no zero");
    auto m = make_mlp(device());
    auto params = m->parameters();
    GradReducer reducer(params, comm(), /*bytes=*/100, rank(), zero);
    reducer.hold_buckets_until_finish(true);
    ASSERT_GT(reducer.num_buckets(), 2);
    reducer.zero_grad();
    reducer.begin_backward(/*sync=*/true);
    mlp_loss(m, rank(), 0, device()).backward();
    EXPECT_TRUE(reducer.launch_order().empty()) << "a bucket was launched during backward";
    reducer.finish();
    std::vector<int64_t> in_order(reducer.num_buckets());
    for (size_t i = 0; i < in_order.size(); ++i) in_order[i] = static_cast<int64_t>(i);
    EXPECT_EQ(reducer.launch_order(), in_order);
    // Every rank's own gradient, summed: what the unheld reducer gives.
    auto sum = torch::zeros({reducer.numel()});
    for (int q = 0; q < world(); ++q) {
      auto g = torch::autograd::grad({mlp_loss(m, q, 0, device())}, params);
      std::vector<torch::Tensor> flat;
      for (size_t i = g.size(); i-- > 0;) flat.push_back(g[i].cpu().flatten());
      sum += torch::cat(flat);
    }
    const int64_t b = reducer.shard_begin(), e = reducer.shard_end();
    EXPECT_TRUE(torch::allclose(reducer.flat_grads().narrow(0, b, e - b).cpu(),
                                sum.narrow(0, b, e - b), 1e-6, 1e-7));
  }
}

// Hooks fire in a different order on the two ranks; collectives must still be issued in the same
// order everywhere, or MPI pairs rank 0's bucket i with rank 1's bucket j and sums the wrong values.
TEST_P(Dist, BucketsLaunchInBucketOrderWhateverOrderHooksFire) {
  const int r = rank();
  const int n = 4;
  std::vector<torch::Tensor> params;
  for (int i = 0; i < n; ++i)
    params.push_back(torch::zeros({8}, torch::TensorOptions(device())).requires_grad_(true));
  GradReducer reducer(params, comm(), /*bucket_bytes=*/1, r, /*zero=*/false);  // a bucket each
  ASSERT_EQ(reducer.num_buckets(), n);

  std::vector<int> fired;
  for (int i = 0; i < n; ++i)
    params[i].register_hook([&fired, i](torch::Tensor g) {
      fired.push_back(i);
      return g;
    });
  // Autograd runs the most recently created node first: build the terms in rank-dependent order.
  reducer.zero_grad();
  reducer.begin_backward(/*sync=*/true);
  torch::Tensor loss = torch::zeros({}, torch::TensorOptions(device()));
  for (int k = 0; k < n; ++k) {
    const int i = r == 0 ? k : n - 1 - k;
    loss = loss + (params[i] * static_cast<float>((r + 1) * (i + 1))).sum();
  }
  loss.backward();
  reducer.finish();

  ASSERT_EQ(static_cast<int>(fired.size()), n);
  std::vector<int> other(n);
  MPI_Sendrecv(fired.data(), n, MPI_INT, 1 - r, 0, other.data(), n, MPI_INT, 1 - r, 0,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  EXPECT_NE(fired, other) << "the test needs the hooks to fire in different orders on the ranks";
  EXPECT_EQ(reducer.launch_order(), (std::vector<int64_t>{0, 1, 2, 3}));
  for (int i = 0; i < n; ++i) {  // rank 0 contributed (i+1), rank 1 2(i+1)
    expect_equal(params[i].grad(), torch::full({8}, 3.0f * (i + 1)), "param " + std::to_string(i));
  }
}

// A parameter only rank 1 uses is launched from a hook there and from finish() on rank 0; one no
// rank uses blocks every later bucket until finish(). The order is the same on both ranks.
TEST_P(Dist, UnusedAndRankDependentParametersDoNotStallOrMispair) {
  const int r = rank();
  // Registration order D, B, C, A: buckets (one per parameter, reversed) A=0, C=1, B=2, D=3.
  auto params = make_params({{6}, {4}, {5}, {3}}, device(), 600);
  auto &D = params[0], &B = params[1], &C = params[2], &A = params[3];
  GradReducer reducer(params, comm(), /*bucket_bytes=*/1, r, /*zero=*/false);
  ASSERT_EQ(reducer.num_buckets(), 4);
  reducer.zero_grad();
  reducer.begin_backward(/*sync=*/true);
  auto loss = (A * A).sum() * static_cast<float>(r + 1) + D.sum() * static_cast<float>(r + 2);
  if (r == 1) loss = loss + (C * 3.0f).sum();
  loss.backward();
  reducer.finish();

  std::vector<int64_t> order = reducer.launch_order(), other(order.size());
  ASSERT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3}));
  MPI_Sendrecv(order.data(), 4, MPI_INT64_T, 1 - r, 0, other.data(), 4, MPI_INT64_T, 1 - r, 0,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  EXPECT_EQ(order, other);
  const auto a = A.detach().cpu();
  expect_equal(A.grad(), a * 2 * 1 + a * 2 * 2, "A: 2a from rank 0, 4a from rank 1");
  expect_equal(B.grad(), torch::zeros({4}), "B: no gradient anywhere");
  expect_equal(C.grad(), torch::full({5}, 3.0f), "C: rank 1's only");
  expect_equal(D.grad(), torch::full({6}, 2.0f + 3.0f), "D");
  EXPECT_EQ(B.grad().data_ptr<float>(), reducer.flat_grads().data_ptr<float>() + 3 + 5)
      << "B's gradient is still its view of the flat buffer";
}

// Accumulation micro-steps do not communicate; the last one sums everything.
TEST_P(Dist, AccumulatesLocallyThenSumsOnce) {
  const int r = rank();
  auto p = torch::zeros({3}, torch::TensorOptions(device())).requires_grad_(true);
  GradReducer reducer({p}, comm(), 1 << 20, r, /*zero=*/false);
  reducer.zero_grad();
  for (int m = 0; m < 3; ++m) {
    reducer.begin_backward(/*sync=*/m == 2);
    (p * static_cast<float>(r + 1)).sum().backward();
    if (m < 2) {
      EXPECT_TRUE(reducer.launch_order().empty());
      // Nothing was summed yet: this rank's own accumulation only.
      expect_equal(p.grad(), torch::full({3}, (m + 1) * (r + 1.0f)), "micro-step");
    }
  }
  reducer.finish();
  expect_equal(p.grad(), torch::full({3}, 9.0f), "3 micro-steps x (1 + 2)");
}

// Rank `root`'s weights become everyone's, parameters included (they are views of the buffer).
TEST_P(Dist, BroadcastParamsFromNonZeroRoot) {
  for (int root : {1, 0}) {
    const std::vector<std::vector<int64_t>> shapes = {{3, 3}, {4}, {1}};
    // Different weights per rank: what a run would have without the broadcast.
    std::vector<torch::Tensor> params;
    for (size_t i = 0; i < shapes.size(); ++i)
      params.push_back(rank_values(numel_of(shapes[i]), rank(), torch::kFloat, 700 + i)
                           .view(shapes[i])
                           .to(device())
                           .requires_grad_(true));
    GradReducer reducer(params, comm(), 16, rank(), /*zero=*/false);
    reducer.broadcast_params(root);
    for (size_t i = 0; i < params.size(); ++i)
      expect_equal(params[i].detach().flatten(),
                   rank_values(params[i].numel(), root, torch::kFloat, 700 + i),
                   "root " + std::to_string(root) + " param " + std::to_string(i));
  }
}

// ZeRO-1 with a total that does not divide by the world size: the shards are the padded buffer's
// equal blocks clipped to the parameters, each rank's shard of the gradients is summed, and after
// each rank writes its shard, all_gather_params brings every rank (and every parameter view) all
// shards.
TEST_P(Dist, ZeroShardsOfUnevenTotalAndAllGather) {
  for (const auto& shapes : std::vector<std::vector<std::vector<int64_t>>>{
           {{5}, {6}},  // 11 elements: shards [0, 6) and [6, 11)
           {{1}},       // 1 element: rank 1's shard is empty
           {{4}, {4}},  // 8: no padding
       }) {
    auto params = make_params(shapes, device(), 800);
    GradReducer reducer(params, comm(), /*bucket_bytes=*/12, rank(), /*zero=*/true);
    const int64_t total = reducer.numel();
    const int64_t block = (total + world() - 1) / world();
    SCOPED_TRACE("total " + std::to_string(total));
    EXPECT_TRUE(reducer.zero());
    EXPECT_EQ(reducer.flat_params().numel(), block * world());
    EXPECT_EQ(reducer.shard_begin(), std::min(total, rank() * block));
    EXPECT_EQ(reducer.shard_end(), std::min(total, (rank() + 1) * block));
    int64_t mine[2] = {reducer.shard_begin(), reducer.shard_end()}, all[4];
    MPI_Allgather(mine, 2, MPI_INT64_T, all, 2, MPI_INT64_T, MPI_COMM_WORLD);
    EXPECT_EQ(all[0], 0);
    EXPECT_EQ(all[1], all[2]) << "shards are contiguous and disjoint";
    EXPECT_EQ(all[3], total);

    reducer.zero_grad();
    reducer.begin_backward(/*sync=*/true);
    torch::Tensor loss = torch::zeros({}, torch::TensorOptions(device()));
    for (auto& p : params) loss = loss + (p * static_cast<float>(rank() + 1)).sum();
    loss.backward();
    reducer.finish();
    const int64_t b = reducer.shard_begin(), e = reducer.shard_end();
    expect_equal(reducer.flat_grads().narrow(0, b, e - b), torch::full({e - b}, 3.0f),
                 "this rank's shard of the gradients summed");

    // The optimizer's part: rank q writes 1000 q + index into its shard.
    {
      torch::NoGradGuard no_grad;
      reducer.flat_params()
          .narrow(0, b, e - b)
          .copy_(torch::arange(b, e, torch::kFloat) + 1000.0f * rank());
    }
    reducer.all_gather_params();
    const auto index = torch::arange(total, torch::kLong);
    const auto want =
        (index + 1000 * index.div(block, "floor")).to(torch::kFloat);  // owner i/block
    expect_equal(reducer.flat_params().narrow(0, 0, total), want, "gathered shards");
    int64_t offset = 0;  // the parameters see it: reverse registration order
    for (size_t j = params.size(); j-- > 0;) {
      expect_equal(params[j].detach().flatten(), want.narrow(0, offset, params[j].numel()),
                   "param " + std::to_string(j));
      offset += params[j].numel();
    }
  }
}

// Without ZeRO every rank keeps its own (identical) update: all_gather_params changes nothing.
TEST_P(Dist, AllGatherParamsIsANoOpWithoutZero) {
  auto params = make_params({{5}, {6}}, device(), 900);
  GradReducer reducer(params, comm(), 12, rank(), /*zero=*/false);
  {
    torch::NoGradGuard no_grad;
    reducer.flat_params().fill_(static_cast<float>(rank() + 1));
  }
  reducer.all_gather_params();
  expect_equal(reducer.flat_params(), torch::full({reducer.flat_params().numel()}, rank() + 1.0f),
               "local values kept");
}

INSTANTIATE_TEST_SUITE_P(Backends, Dist,
                         ::testing::Values(Backend::kMpiCpu, Backend::kMpiCuda, Backend::kNccl),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return backend_name(info.param);
                         });

}  // namespace
}  // namespace samout::dist

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  samout::dist::ctx() = samout::dist::init_distributed(&argc, &argv);
  if (samout::dist::ctx().rank != 0) {  // one rank prints; every rank's result counts (exit code)
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  samout::dist::envs().clear();  // NCCL communicators go before MPI does
  samout::dist::finalize_distributed();
  return worst;
}
