// MPI collectives (see communicator.h): CPU tensors in place, CUDA tensors through pinned copies.
#include <glog/logging.h>

#include <chrono>
#include <map>
#include <numeric>
#include <thread>
#include <vector>

#include "samout/common/error.h"
#include "samout/common/strings.h"
#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"

namespace samout::dist {

namespace {

// How a tensor's elements travel: MPI's own type where MPI computes on them (sums), else opaque
// units of the same width (bf16, fp16, bool...: MPI has no type for some, and needs none to copy).
struct Wire {
  MPI_Datatype type;
  int64_t units_per_element;
  int count(int64_t elements) const {
    const int64_t n = elements * units_per_element;
    TORCH_CHECK(n <= INT32_MAX, "MPI communicator: ", n, " elements exceed MPI's int count");
    return static_cast<int>(n);
  }
};

Wire wire_of(torch::ScalarType t, bool sums) {
  if (sums) return {mpi_datatype(t), 1};
  switch (c10::elementSize(t)) {
    case 1:
      return {MPI_UINT8_T, 1};
    case 2:
      return {MPI_UINT16_T, 1};
    case 4:
      return {MPI_UINT32_T, 1};
    case 8:
      return {MPI_UINT64_T, 1};
    default:
      return {MPI_BYTE, static_cast<int64_t>(c10::elementSize(t))};
  }
}

class MpiCommunicator final : public Communicator {
 public:
  // comm: MPI_COMM_WORLD, or a group's communicator (owned: freed with this object).
  MpiCommunicator(MPI_Comm comm, double timeout_s, bool owned)
      : Communicator(size_of(comm), timeout_s), comm_(comm), owned_(owned) {
    SAMOUT_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  }

  ~MpiCommunicator() override {
    if (!pending_.empty()) LOG(WARNING) << pending_.size() << " MPI requests left at shutdown";
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  void allreduce_sum_async(torch::Tensor flat, const std::string& what) override {
    launch(flat, what, /*sums=*/true, [&](const torch::Tensor& h, const Wire& w, MPI_Request* req) {
      SAMOUT_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, h.data_ptr(), w.count(h.numel()), w.type,
                                      MPI_SUM, comm_, req));
    });
    count_sent(2 * ring_share(flat.nbytes()));
  }

  void reduce_scatter_sum_async(torch::Tensor flat, const std::vector<int64_t>& counts,
                                const std::string& what) override {
    CHECK_EQ(static_cast<int>(counts.size()), world_);
    CHECK_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), flat.numel());
    CHECK(flat.is_contiguous());
    if (world_ == 1) return;
    const Wire w = wire_of(flat.scalar_type(), /*sums=*/true);  // before a pending entry exists
    std::vector<int> units(world_);
    for (int q = 0; q < world_; ++q) units[q] = w.count(counts[q]);
    const int64_t offset = std::accumulate(counts.begin(), counts.begin() + rank_, int64_t{0});
    // Not in place: MPI would put this rank's part at the start of the buffer. The sum lands in a
    // buffer of its own, copied into the part by wait_all().
    const auto host_opts = flat.options().device(torch::kCPU).pinned_memory(!flat.is_cpu());
    torch::Tensor recv = torch::empty({std::max<int64_t>(1, counts[rank_])}, host_opts);
    pending_.push_back({flat.narrow(0, offset, counts[rank_]), recv.narrow(0, 0, counts[rank_]),
                        host_copy(flat), std::move(units), MPI_REQUEST_NULL, what});
    Pending& p = pending_.back();
    SAMOUT_MPI_CHECK(MPI_Ireduce_scatter(p.send.data_ptr(), recv.data_ptr(), p.counts.data(),
                                         w.type, MPI_SUM, comm_, &p.req));
    count_sent(ring_share(flat.nbytes()));
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
      if (!p.tensor.is_same(p.host)) p.tensor.copy_(p.host, /*non_blocking=*/true);
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
    const int64_t n = flat.numel() / world_;
    launch(flat, "all-gather of the parameters", /*sums=*/false,
           [&](const torch::Tensor& h, const Wire& w, MPI_Request* req) {
             SAMOUT_MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, h.data_ptr(),
                                             w.count(n), w.type, comm_, req));
           });
    count_sent(ring_share(flat.nbytes()));
    wait_all();
  }

  void broadcast(torch::Tensor t, int root) override {
    launch(
        t, "broadcast", /*sums=*/false,
        [&](const torch::Tensor& h, const Wire& w, MPI_Request* req) {
          SAMOUT_MPI_CHECK(MPI_Ibcast(h.data_ptr(), w.count(h.numel()), w.type, root, comm_, req));
        });
    count_sent(static_cast<double>(t.nbytes()));
    wait_all();
  }

 private:
  // The host memory MPI works on is the tensor itself on the CPU, else a pinned copy of it. The
  // copy out is synchronous (MPI needs the values now); the copy back into `tensor` (where it is
  // not the very memory MPI wrote) is queued on the current stream, and the pinned block is not
  // reused before it is done (PyTorch's caching host allocator records the copy). All stay alive
  // until the collective completes, the counts array too (MPI may read it until then).
  struct Pending {
    torch::Tensor tensor, host;  // where the result goes, and where MPI writes it
    torch::Tensor send;          // a separate send buffer (reduce-scatter), or undefined
    std::vector<int> counts;     // per-rank counts (reduce-scatter)
    MPI_Request req;
    std::string what;
  };

  static torch::Tensor host_copy(const torch::Tensor& t) {
    if (t.is_cpu()) return t;
    return torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true)).copy_(t);
  }

  // Starts an in-place collective on `t`'s host memory (issue(host, wire, request)); wait_all()
  // completes it. `sums`: MPI computes on the elements, so it needs their type.
  template <typename F>
  void launch(const torch::Tensor& t, const std::string& what, bool sums, F&& issue) {
    if (world_ == 1) return;
    const Wire w = wire_of(t.scalar_type(), sums);  // before a pending entry exists
    CHECK(t.is_contiguous());
    torch::Tensor host = host_copy(t);
    pending_.push_back({t, host, torch::Tensor(), {}, MPI_REQUEST_NULL, what});
    issue(host, w, &pending_.back().req);
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
  int rank_ = 0;
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
