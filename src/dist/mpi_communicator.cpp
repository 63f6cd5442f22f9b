// MPI collectives (see communicator.h): CPU tensors in place, CUDA tensors through pinned copies.
#include <glog/logging.h>

#include <chrono>
#include <map>
#include <thread>
#include <vector>

#include "samout/common/error.h"
#include "samout/common/strings.h"
#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"

namespace samout::dist {

namespace {

class MpiCommunicator final : public Communicator {
 public:
  // comm: MPI_COMM_WORLD, or a group's communicator (owned: freed with this object).
  MpiCommunicator(MPI_Comm comm, double timeout_s, bool owned)
      : Communicator(size_of(comm), timeout_s), comm_(comm), owned_(owned) {}

  ~MpiCommunicator() override {
    if (!pending_.empty()) LOG(WARNING) << pending_.size() << " MPI requests left at shutdown";
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  void allreduce_sum_async(torch::Tensor flat, const std::string& what) override {
    launch(flat, what, [&](const torch::Tensor& h, MPI_Datatype type, MPI_Request* req) {
      SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, h.data_ptr(), static_cast<int>(h.numel()), type,
                                      MPI_SUM, comm_, req));
    });
  }

  void progress() override {
    for (auto& p : pending_) {
      int done = 0;
      if (p.req != MPI_REQUEST_NULL) SAMOUT_MPI_CHECK(MPI_Test(&p.req, &done, MPI_STATUS_IGNORE));
    }
  }

  double wait_all() override {
    const auto start = std::chrono::steady_clock::now();
    for (auto& p : pending_) {
      wait_one(&p.req, p.what, start);
      if (!p.tensor.is_cpu()) p.tensor.copy_(p.host, /*non_blocking=*/true);
    }
    pending_.clear();
    return seconds_since(start);
  }

  // The blocking collectives complete those started before them too (they were issued first).
  void allreduce_sum(torch::Tensor t) override {
    allreduce_sum_async(t, "all-reduce");
    wait_all();
  }

  void all_gather(torch::Tensor flat) override {
    CHECK(flat.numel() % world_ == 0);
    const int n = static_cast<int>(flat.numel() / world_);
    launch(flat, "all-gather of the parameters",
           [&](const torch::Tensor& h, MPI_Datatype type, MPI_Request* req) {
             SAMOUT_MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, h.data_ptr(), n,
                                             type, comm_, req));
           });
    wait_all();
  }

  void broadcast(torch::Tensor t, int root) override {
    launch(t, "broadcast", [&](const torch::Tensor& h, MPI_Datatype type, MPI_Request* req) {
      SAMOUT_MPI_CHECK(
          MPI_Ibcast(h.data_ptr(), static_cast<int>(h.numel()), type, root, comm_, req));
    });
    wait_all();
  }

 private:
  // The host memory MPI works on is the tensor itself on the CPU, else a pinned copy of it. The
  // copy out is synchronous (MPI needs the values now); the copy back is queued on the current
  // stream, and the pinned block is not reused before it is done (PyTorch's caching host allocator
  // records the copy). Both stay alive until the collective completes.
  struct Pending {
    torch::Tensor tensor, host;
    MPI_Request req;
    std::string what;
  };

  // Starts a collective on `t`'s host memory (issue(host, type, request)); wait_all() completes it.
  template <typename F>
  void launch(const torch::Tensor& t, const std::string& what, F&& issue) {
    if (world_ == 1) return;
    const MPI_Datatype type = mpi_datatype(t.scalar_type());  // before a pending entry exists
    CHECK(t.is_contiguous());
    torch::Tensor host = t;
    if (!t.is_cpu())
      host = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true)).copy_(t);
    pending_.push_back({t, host, MPI_REQUEST_NULL, what});
    issue(host, type, &pending_.back().req);
  }

  // MPI_Wait has no deadline, so test in a loop: spin for kSpinS (a small collective needs several
  // tests, and each sleep costs ~50 us of timer slack: a floor of ~200 us per collective in
  // bench_allreduce), then back off so as not to steal a core from a peer computing on this node.
  void wait_one(MPI_Request* req, const std::string& what,
                std::chrono::steady_clock::time_point start) const {
    constexpr double kSpinS = 200e-6;
    const auto begin = std::chrono::steady_clock::now();
    int done = 0;
    while (*req != MPI_REQUEST_NULL) {
      SAMOUT_MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
      if (done) break;
      const auto now = std::chrono::steady_clock::now();
      if (std::chrono::duration<double>(now - begin).count() > kSpinS)
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      if (std::chrono::duration<double>(now - start).count() > timeout_s_)
        abort_job("MPI " + what + " of step " + std::to_string(step_) +
                  " did not complete within --comm_timeout_s=" + std::to_string(timeout_s_) +
                  " s (a peer died or hangs)");
    }
  }

  static int size_of(MPI_Comm comm) {
    int n = 1;
    SAMOUT_MPI_CHECK(MPI_Comm_size(comm, &n));
    return n;
  }

  MPI_Comm comm_;
  bool owned_;
  std::vector<Pending> pending_;
};

}  // namespace

MPI_Datatype mpi_datatype(torch::ScalarType t) {
  static const std::map<torch::ScalarType, MPI_Datatype> types = {{torch::kFloat, MPI_FLOAT},
                                                                  {torch::kDouble, MPI_DOUBLE},
                                                                  {torch::kLong, MPI_INT64_T},
                                                                  {torch::kInt, MPI_INT32_T}};
  const auto it = types.find(t);
  TORCH_CHECK(it != types.end(), "MPI communicator: unsupported dtype ", t);
  return it->second;
}

std::unique_ptr<Communicator> make_communicator(const DistContext& ctx, double timeout_s) {
  if (ctx.comm == CommKind::kNccl && ctx.world > 1)
    return make_nccl_communicator(MPI_COMM_WORLD, ctx.device, timeout_s);
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, timeout_s, /*owned=*/false);
}

std::unique_ptr<Communicator> make_group_communicator(const DistContext& ctx, int group_size,
                                                      double timeout_s) {
  CHECK(group_size >= 1 && ctx.world % group_size == 0);
  MPI_Comm group;
  SAMOUT_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, ctx.rank / group_size, ctx.rank, &group));
  if (ctx.comm == CommKind::kNccl && group_size > 1) {
    auto c = make_nccl_communicator(group, ctx.device, timeout_s);
    SAMOUT_MPI_CHECK(MPI_Comm_free(&group));  // NCCL needed it only to share its unique id
    return c;
  }
  return std::make_unique<MpiCommunicator>(group, timeout_s, /*owned=*/true);
}

#ifndef SAMOUT_HAVE_NCCL
bool nccl_compiled() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm, const torch::Device&, double) {
  throw UsageError("this build has no NCCL: use --comm=mpi or --device=cpu");
}
#endif

}  // namespace samout::dist
