// MPI collectives. CPU tensors are reduced in place; CUDA tensors (--comm=mpi, ranks sharing a GPU)
// go through pinned host buffers: copied out before the collective, copied back after it.
#include <glog/logging.h>

#include <chrono>
#include <thread>
#include <vector>

#include "samout/common/error.h"
#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"

namespace samout::dist {

namespace {

// The host memory MPI works on: the tensor itself on the CPU, else a pinned copy of it. The copy out
// is synchronous (MPI needs the values now); the copy back is queued on the current stream, and the
// pinned block is not reused before it is done (PyTorch's caching host allocator records the copy).
struct HostView {
  torch::Tensor device, host;
  explicit HostView(const torch::Tensor& t) : device(t) {
    CHECK(t.is_contiguous());
    if (t.is_cpu()) {
      host = t;
    } else {
      host = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true));
      host.copy_(t);
    }
  }
  void copy_back() {
    if (!device.is_cpu()) device.copy_(host, /*non_blocking=*/true);
  }
};

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
    if (world_ == 1) return;
    const MPI_Datatype type = mpi_datatype(flat.scalar_type());  // before a pending entry exists
    pending_.push_back({HostView(flat), MPI_REQUEST_NULL, what});
    auto& h = pending_.back().view.host;
    SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, h.data_ptr(), static_cast<int>(h.numel()), type,
                                    MPI_SUM, comm_, &pending_.back().req));
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
      p.view.copy_back();
    }
    pending_.clear();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  void allreduce_sum(torch::Tensor t) override {
    if (world_ == 1) return;
    HostView v(t);
    MPI_Request req;
    SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, v.host.data_ptr(),
                                    static_cast<int>(v.host.numel()),
                                    mpi_datatype(v.host.scalar_type()), MPI_SUM, comm_, &req));
    wait_one(&req, "all-reduce", std::chrono::steady_clock::now());
    v.copy_back();
  }

  void all_gather(torch::Tensor flat) override {
    if (world_ == 1) return;
    CHECK(flat.numel() % world_ == 0);
    HostView v(flat);
    const int n = static_cast<int>(flat.numel() / world_);
    MPI_Request req;
    SAMOUT_MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, v.host.data_ptr(), n,
                                    mpi_datatype(v.host.scalar_type()), comm_, &req));
    wait_one(&req, "all-gather of the parameters", std::chrono::steady_clock::now());
    v.copy_back();
  }

  void broadcast(torch::Tensor t, int root) override {
    if (world_ == 1) return;
    HostView v(t);
    MPI_Request req;
    SAMOUT_MPI_CHECK(MPI_Ibcast(v.host.data_ptr(), static_cast<int>(v.host.numel()),
                                mpi_datatype(v.host.scalar_type()), root, comm_, &req));
    wait_one(&req, "broadcast", std::chrono::steady_clock::now());
    v.copy_back();
  }

 private:
  struct Pending {
    HostView view;  // keeps the buffers alive until the collective completes
    MPI_Request req;
    std::string what;
  };

  // MPI_Wait has no deadline: test in a loop so that a dead peer cannot hang us. The first
  // kSpinS of a wait spin on MPI_Test: a small collective needs several tests to progress, and each
  // sleep costs ~50 us of timer slack (a floor of ~200 us per collective, bench_allreduce). After
  // that, back off a little so that a waiting rank does not steal a core from a peer that is still
  // computing on the same node.
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
      const double waited = std::chrono::duration<double>(now - start).count();
      if (waited > timeout_s_)
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
  switch (t) {
    case torch::kFloat:
      return MPI_FLOAT;
    case torch::kDouble:
      return MPI_DOUBLE;
    case torch::kLong:
      return MPI_INT64_T;
    case torch::kInt:
      return MPI_INT32_T;
    default:
      TORCH_CHECK(false, "MPI communicator: unsupported dtype ", t);
  }
}

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, double timeout_s, bool owned) {
  return std::make_unique<MpiCommunicator>(comm, timeout_s, owned);
}

std::unique_ptr<Communicator> make_communicator(const DistContext& ctx, double timeout_s) {
  if (ctx.comm == CommKind::kNccl && ctx.world > 1)
    return make_nccl_communicator(MPI_COMM_WORLD, ctx.device, timeout_s);
  return make_mpi_communicator(MPI_COMM_WORLD, timeout_s, /*owned=*/false);
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
  return make_mpi_communicator(group, timeout_s, /*owned=*/true);
}

#ifndef SAMOUT_HAVE_NCCL
bool nccl_compiled() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm, const torch::Device&, double) {
  throw UsageError("this build has no NCCL: use --comm=mpi or --device=cpu");
}
#endif

}  // namespace samout::dist
