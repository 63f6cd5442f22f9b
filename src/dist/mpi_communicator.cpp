// MPI collectives for CPU tensors.
#include <glog/logging.h>

#include <chrono>
#include <thread>
#include <vector>

#include "samout/common/error.h"
#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"

namespace samout::dist {

namespace {

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return MPI_FLOAT;
    case torch::kDouble: return MPI_DOUBLE;
    case torch::kLong: return MPI_INT64_T;
    case torch::kInt: return MPI_INT32_T;
    default: TORCH_CHECK(false, "MPI communicator: unsupported dtype ", t.scalar_type());
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int world, double timeout_s) : Communicator(world, timeout_s) {}

  ~MpiCommunicator() override {
    if (!pending_.empty()) LOG(WARNING) << pending_.size() << " MPI requests left at shutdown";
  }

  void allreduce_sum_async(torch::Tensor flat) override {
    CHECK(flat.is_cpu() && flat.is_contiguous());
    if (world_ == 1) return;
    pending_.push_back({flat, MPI_REQUEST_NULL});
    SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, flat.data_ptr(), static_cast<int>(flat.numel()),
                                    mpi_type(flat), MPI_SUM, MPI_COMM_WORLD, &pending_.back().req));
  }

  void progress() override {
    for (auto& p : pending_) {
      int done = 0;
      if (p.req != MPI_REQUEST_NULL) SAMOUT_MPI_CHECK(MPI_Test(&p.req, &done, MPI_STATUS_IGNORE));
    }
  }

  double wait_all() override {
    const auto start = std::chrono::steady_clock::now();
    // MPI_Waitall has no deadline; test in a loop so that a dead peer cannot hang us.
    for (auto& p : pending_) {
      int done = 0;
      while (p.req != MPI_REQUEST_NULL) {
        SAMOUT_MPI_CHECK(MPI_Test(&p.req, &done, MPI_STATUS_IGNORE));
        if (done) break;
        check_deadline(start);
      }
    }
    pending_.clear();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  void allreduce_sum(torch::Tensor t) override {
    CHECK(t.is_cpu() && t.is_contiguous());
    if (world_ == 1) return;
    MPI_Request req;
    SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()),
                                    mpi_type(t), MPI_SUM, MPI_COMM_WORLD, &req));
    wait_one(&req);
  }

  void all_gather(torch::Tensor flat) override {
    CHECK(flat.is_cpu() && flat.is_contiguous() && flat.numel() % world_ == 0);
    if (world_ == 1) return;
    const int n = static_cast<int>(flat.numel() / world_);
    MPI_Request req;
    SAMOUT_MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, flat.data_ptr(), n,
                                    mpi_type(flat), MPI_COMM_WORLD, &req));
    wait_one(&req);
  }

  void broadcast(torch::Tensor t, int root) override {
    CHECK(t.is_cpu() && t.is_contiguous());
    if (world_ == 1) return;
    MPI_Request req;
    SAMOUT_MPI_CHECK(MPI_Ibcast(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), root,
                                MPI_COMM_WORLD, &req));
    wait_one(&req);
  }

 private:
  struct Pending {
    torch::Tensor flat;  // keeps the buffer alive until the collective completes
    MPI_Request req;
  };

  void wait_one(MPI_Request* req) {
    const auto start = std::chrono::steady_clock::now();
    int done = 0;
    while (!done) {
      SAMOUT_MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
      if (!done) check_deadline(start);
    }
  }

  // Called between unsuccessful MPI_Tests: after a short spin, back off a little so that a waiting
  // rank does not steal a core from a peer that is still computing on the same node.
  void check_deadline(std::chrono::steady_clock::time_point start) const {
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s_ > 0 && waited > timeout_s_)
      abort_job("MPI collective did not complete within --comm_timeout_s=" +
                std::to_string(timeout_s_) + " s (a peer died or hangs)");
  }

  std::vector<Pending> pending_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const DistContext& ctx, double timeout_s) {
  return std::make_unique<MpiCommunicator>(ctx.world, timeout_s);
}

std::unique_ptr<Communicator> make_communicator(const DistContext& ctx, double timeout_s) {
  if (ctx.device.is_cuda()) return make_nccl_communicator(ctx, timeout_s);
  return make_mpi_communicator(ctx, timeout_s);
}

#ifndef SAMOUT_HAVE_CUDA
std::unique_ptr<Communicator> make_nccl_communicator(const DistContext&, double) {
  throw UsageError("this build has no NCCL: use --device=cpu");
}
#endif

}  // namespace samout::dist
