// select_device's decision (dist/device_choice.h) as a table: what a rank sees -> its device and
// communicator, or the refusal. No GPU needed.
#include "samout/dist/device_choice.h"

#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

namespace samout::dist {
namespace {

struct Case {
  const char* what;
  int local_rank, local_world;
  int64_t visible;
  const char* cuda_visible_devices;  // null: unset
  DeviceRequest device;
  CommRequest comm;
  // expected
  int gpu;  // -1: the CPU
  CommKind kind;
  bool shared;
  const char* refusal;  // a part of the message; null: accepted
};

constexpr auto kAuto = DeviceRequest::kAuto;
constexpr auto kCpu = DeviceRequest::kCpu;
constexpr auto kCuda = DeviceRequest::kCuda;
constexpr auto kAny = CommRequest::kAuto;
constexpr auto kNccl = CommRequest::kNccl;
constexpr auto kMpi = CommRequest::kMpi;
constexpr auto N = CommKind::kNccl;
constexpr auto M = CommKind::kMpi;

const Case kCases[] = {
    // No GPU, or the CPU asked for.
    {"no GPU, auto: CPU and MPI", 1, 2, 0, nullptr, kAuto, kAny, -1, M, false, nullptr},
    {"no GPU, --device=cuda", 0, 1, 0, nullptr, kCuda, kAny, -1, M, false,
     "--device=cuda but no CUDA device is visible"},
    {"no GPU, --comm=nccl", 0, 2, 0, nullptr, kAuto, kNccl, -1, M, false,
     "--comm=nccl needs CUDA devices"},
    {"CUDA_VISIBLE_DEVICES empty hides every GPU", 0, 1, 0, "", kAuto, kAny, -1, M, false, nullptr},
    {"--device=cpu with GPUs", 1, 4, 8, nullptr, kCpu, kAny, -1, M, false, nullptr},
    {"--device=cpu --comm=nccl", 0, 4, 8, nullptr, kCpu, kNccl, -1, M, false,
     "--comm=nccl needs CUDA devices"},
    // Every rank sees the node's GPUs: GPU local_rank.
    {"8 ranks, 8 GPUs", 5, 8, 8, nullptr, kAuto, kAny, 5, N, false, nullptr},
    {"2 ranks, 8 GPUs", 1, 2, 8, nullptr, kCuda, kNccl, 1, N, false, nullptr},
    {"one rank, one GPU", 0, 1, 1, nullptr, kAuto, kAny, 0, N, false, nullptr},
    {"4 ranks, CUDA_VISIBLE_DEVICES=0,1,2,3 for all", 3, 4, 4, "0,1,2,3", kAuto, kAny, 3, N, false,
     nullptr},
    {"2 ranks, 2 GPUs each (--gpus-per-task=2)", 1, 2, 2, "2,3", kAuto, kNccl, 1, N, false,
     nullptr},
    {"--comm=mpi, enough GPUs: not shared", 2, 4, 4, nullptr, kAuto, kMpi, 2, M, false, nullptr},
    // One GPU per rank, bound (srun --gpus-per-task=1, --gpu-bind): GPU 0.
    {"Slurm binding, rank 0", 0, 4, 1, "0", kAuto, kAny, 0, N, false, nullptr},
    {"Slurm binding, rank 3", 3, 4, 1, "3", kAuto, kNccl, 0, N, false, nullptr},
    {"binding by UUID", 7, 8, 1, "GPU-5d8c6e1a-0c2b-4c8e-9c1a-3f0e2b7d9a41", kCuda, kAny, 0, N,
     false, nullptr},
    {"binding under --comm=mpi: not shared", 1, 2, 1, "1", kAuto, kMpi, 0, M, false, nullptr},
    // Real oversubscription: refused under NCCL, shared under --comm=mpi.
    {"4 ranks, 2 GPUs, unset", 3, 4, 2, nullptr, kAuto, kAny, -1, N, false,
     "4 ranks on host h but only 2 GPU(s) visible to each (CUDA_VISIBLE_DEVICES is unset"},
    {"4 ranks, 1 GPU on the node, unset", 1, 4, 1, nullptr, kCuda, kNccl, -1, N, false,
     "--comm=mpi lets ranks share one"},
    {"4 ranks, CUDA_VISIBLE_DEVICES=0,1 for all", 0, 4, 2, "0,1", kAuto, kAny, -1, N, false,
     "4 ranks on host h but only 2 GPU(s) visible to each. NCCL needs one GPU per rank"},
    {"two listed, one present", 1, 2, 1, "0,7", kAuto, kNccl, -1, N, false,
     "2 ranks on host h but only 1 GPU(s)"},
    {"4 ranks, 2 GPUs, --comm=mpi: shared", 3, 4, 2, nullptr, kAuto, kMpi, 1, M, true, nullptr},
    {"2 ranks, 1 GPU, --comm=mpi: shared", 1, 2, 1, nullptr, kCuda, kMpi, 0, M, true, nullptr},
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.what; }  // gtest's messages

class DeviceChoiceTable : public testing::TestWithParam<Case> {};

TEST_P(DeviceChoiceTable, Decides) {
  const Case& c = GetParam();
  GpuView view;
  view.local_rank = c.local_rank;
  view.local_world = c.local_world;
  view.visible = c.visible;
  view.cuda_visible_devices = c.cuda_visible_devices;
  view.host = "h";
  const DeviceChoice got = choose_device(view, c.device, c.comm);
  if (c.refusal) {
    EXPECT_NE(got.refusal.find(c.refusal), std::string::npos)
        << c.what << ": refusal '" << got.refusal << "'";
    return;
  }
  EXPECT_EQ(got.refusal, "") << c.what;
  EXPECT_EQ(got.gpu, c.gpu) << c.what;
  EXPECT_EQ(got.comm, c.kind) << c.what;
  EXPECT_EQ(got.shared, c.shared) << c.what;
}

INSTANTIATE_TEST_SUITE_P(Cases, DeviceChoiceTable, testing::ValuesIn(kCases));

// A node's ranks, each deciding alone, never land two on one GPU index unless they are bound (the
// bus-id check covers that) or share under --comm=mpi.
TEST(DeviceChoice, RanksOfANodeTakeDistinctGpus) {
  for (int world = 1; world <= 8; ++world) {
    std::vector<int> taken(8, 0);
    for (int r = 0; r < world; ++r) {
      GpuView v;
      v.local_rank = r;
      v.local_world = world;
      v.visible = 8;
      const DeviceChoice c = choose_device(v, DeviceRequest::kAuto, CommRequest::kAuto);
      ASSERT_EQ(c.refusal, "");
      ASSERT_GE(c.gpu, 0);
      EXPECT_EQ(++taken[c.gpu], 1) << world << " ranks: GPU " << c.gpu << " taken twice";
    }
  }
}

TEST(DeviceChoice, FirstSharedFindsTwoRanksOnOneBusId) {
  EXPECT_EQ(first_shared({}), std::make_pair(-1, -1));
  EXPECT_EQ(first_shared({"0000:1b:00.0", "0000:3b:00.0", "0000:5b:00.0"}), std::make_pair(-1, -1));
  EXPECT_EQ(first_shared({"", "", "0000:1b:00.0"}), std::make_pair(-1, -1));  // CPU ranks
  // One CUDA_VISIBLE_DEVICES=0 exported to every rank: all bound to the same GPU.
  EXPECT_EQ(first_shared({"0000:1b:00.0", "0000:1b:00.0", "0000:1b:00.0"}), std::make_pair(0, 1));
  EXPECT_EQ(first_shared({"0000:1b:00.0", "0000:3b:00.0", "0000:5b:00.0", "0000:3b:00.0"}),
            std::make_pair(1, 3));
}

}  // namespace
}  // namespace samout::dist
