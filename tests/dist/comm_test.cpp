// GradReducer and the MPI communicator at two ranks, under a real mpirun (see CMakeLists.txt):
//   mpirun -np 2 build/bin/comm_test
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "samout/dist/communicator.h"
#include "samout/dist/context.h"
#include "samout/dist/grad_reducer.h"

namespace samout::dist {
namespace {

DistContext& ctx() {
  static DistContext c;
  return c;
}

TEST(MpiCommunicator, AllReduceBroadcastAllGather) {
  ASSERT_EQ(ctx().world, 2) << "run under mpirun -np 2";
  auto comm = make_communicator(ctx(), 60.0);
  const int r = ctx().rank;
  auto t = torch::full({5}, static_cast<double>(r + 1), torch::kDouble);
  comm->allreduce_sum(t);
  EXPECT_TRUE(torch::equal(t, torch::full({5}, 3.0, torch::kDouble)));

  auto b = torch::arange(4, torch::kFloat) * (r == 1 ? 10 : 1);
  comm->broadcast(b, /*root=*/1);
  EXPECT_TRUE(torch::equal(b, torch::arange(4, torch::kFloat) * 10));

  auto g = torch::zeros({6}, torch::kFloat);  // rank r owns block r
  g.narrow(0, 3 * r, 3).fill_(r + 5);
  comm->all_gather(g);
  EXPECT_TRUE(torch::equal(g, torch::tensor({5.f, 5.f, 5.f, 6.f, 6.f, 6.f})));

  // Several asynchronous sums in flight at once, completed by one wait.
  std::vector<torch::Tensor> parts;
  for (int i = 0; i < 4; ++i)
    parts.push_back(torch::full({1000 + i}, static_cast<float>(i * (r + 1))));
  for (auto& p : parts) comm->allreduce_sum_async(p, "test");
  comm->wait_all();
  for (int i = 0; i < 4; ++i)
    EXPECT_TRUE(torch::equal(parts[i], torch::full({1000 + i}, 3.0f * i)));
}

// Hooks fire in a different order on the two ranks; collectives must still be issued in the same
// order everywhere, or MPI pairs rank 0's bucket i with rank 1's bucket j and sums the wrong values.
TEST(GradReducer, BucketsLaunchInBucketOrderWhateverOrderHooksFire) {
  auto comm = make_communicator(ctx(), 60.0);
  const int r = ctx().rank;
  const int n = 4;
  std::vector<torch::Tensor> params;
  for (int i = 0; i < n; ++i)
    params.push_back(torch::zeros({8}, torch::kFloat).requires_grad_(true));
  GradReducer reducer(params, *comm, /*bucket_bytes=*/1, r, /*zero=*/false);  // a bucket each
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
  torch::Tensor loss = torch::zeros({});
  for (int k = 0; k < n; ++k) {
    const int i = r == 0 ? k : n - 1 - k;
    loss = loss + (params[i] * static_cast<float>((r + 1) * (i + 1))).sum();
  }
  loss.backward();
  reducer.finish();

  std::vector<int> other(n);
  MPI_Sendrecv(fired.data(), n, MPI_INT, 1 - r, 0, other.data(), n, MPI_INT, 1 - r, 0,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  EXPECT_NE(fired, other) << "the test needs the hooks to fire in different orders on the ranks";
  EXPECT_EQ(reducer.launch_order(), (std::vector<int64_t>{0, 1, 2, 3}));
  for (int i = 0; i < n; ++i) {  // rank 0 contributed (i+1), rank 1 2(i+1)
    EXPECT_TRUE(torch::equal(params[i].grad(), torch::full({8}, 3.0f * (i + 1)))) << "param " << i;
  }
}

// Accumulation micro-steps do not communicate; the last one sums everything.
TEST(GradReducer, AccumulatesLocallyThenSumsOnce) {
  auto comm = make_communicator(ctx(), 60.0);
  const int r = ctx().rank;
  auto p = torch::zeros({3}, torch::kFloat).requires_grad_(true);
  GradReducer reducer({p}, *comm, 1 << 20, r, /*zero=*/false);
  reducer.zero_grad();
  for (int m = 0; m < 3; ++m) {
    reducer.begin_backward(/*sync=*/m == 2);
    (p * static_cast<float>(r + 1)).sum().backward();
    if (m < 2) {
      EXPECT_TRUE(reducer.launch_order().empty());
    }
  }
  reducer.finish();
  EXPECT_TRUE(torch::equal(p.grad(), torch::full({3}, 9.0f)));  // 3 micro-steps x (1 + 2)
}

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
  samout::dist::finalize_distributed();
  return worst;
}
