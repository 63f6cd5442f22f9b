// NCCL collectives for CUDA tensors (see communicator.h). On an asynchronous error or a missed
// deadline the watchdog aborts the communicator, so that its kernels return, and then the job.
// All-gather and broadcast only move data: they send bytes (ncclUint8), so any dtype goes.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <glog/logging.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <numeric>

#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"
#include "samout/dist/watchdog.h"

namespace samout::dist {

namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(MPI_Comm mpi, int rank, int size, const torch::Device& device, double timeout_s)
      : Communicator(size, timeout_s),
        rank_(rank),
        device_(device.index()),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index())) {
    ncclUniqueId id;
    if (rank == 0) SAMOUT_NCCL_CHECK(ncclGetUniqueId(&id));
    SAMOUT_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi));
    SAMOUT_NCCL_CHECK(ncclCommInitRank(&comm_, size, id, rank));
    watchdog_ = std::make_unique<Watchdog>(
        timeout_s, [this] { return async_error(); },
        [this](const std::string& why) {
          aborted_ = true;
          ncclCommAbort(comm_);  // the stuck kernels return; the communicator is unusable now
          abort_job("NCCL: " + why);
        },
        Watchdog::kDefaultPoll,
        // Its event queries would otherwise make a context on GPU 0 (a new thread's device).
        [device = device_] { c10::cuda::set_device(device); });
  }

  ~NcclCommunicator() override {
    watchdog_.reset();  // stops polling before the communicator goes
    if (comm_ && !aborted_) ncclCommDestroy(comm_);
  }

  void allreduce_sum_async(torch::Tensor flat, const std::string& what) override {
    CHECK(flat.is_cuda() && flat.is_contiguous());
    if (world_ == 1) return;
    issue(what, flat, [&](cudaStream_t s) {
      SAMOUT_NCCL_CHECK(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), flat.numel(),
                                      nccl_datatype(flat.scalar_type()), ncclSum, comm_, s));
    });
    count_sent(2 * ring_share(flat.nbytes()));
  }

  // In place, like MPI's: equal parts are one ncclReduceScatter (whose in-place output is this
  // rank's part of the input); unequal ones, which it cannot take, one ncclReduce per part to its
  // owner, fused into one launch by the group (the same bytes: each rank sends all but its part).
  void reduce_scatter_sum_async(torch::Tensor flat, const std::vector<int64_t>& counts,
                                const std::string& what) override {
    CHECK(flat.is_cuda() && flat.is_contiguous());
    CHECK_EQ(static_cast<int>(counts.size()), world_);
    CHECK_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), flat.numel());
    if (world_ == 1) return;
    const ncclDataType_t type = nccl_datatype(flat.scalar_type());
    const size_t elem = flat.element_size();
    auto* base = static_cast<char*>(flat.data_ptr());
    const bool equal =
        std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; });
    issue(what, flat, [&](cudaStream_t s) {
      if (equal) {
        const size_t n = counts[0];
        SAMOUT_NCCL_CHECK(
            ncclReduceScatter(base, base + rank_ * n * elem, n, type, ncclSum, comm_, s));
        return;
      }
      SAMOUT_NCCL_CHECK(ncclGroupStart());
      size_t offset = 0;
      for (int q = 0; q < world_; ++q) {
        void* part = base + offset * elem;
        if (counts[q] > 0)
          SAMOUT_NCCL_CHECK(ncclReduce(part, part, counts[q], type, ncclSum, q, comm_, s));
        offset += counts[q];
      }
      SAMOUT_NCCL_CHECK(ncclGroupEnd());
    });
    count_sent(ring_share(flat.nbytes()));
  }

  void progress() override {}

  double wait_all() override {
    if (!launched_) return 0.0;
    // The compute stream waits for everything issued on the collective stream so far.
    at::cuda::CUDAEvent done;
    done.record(stream_);
    done.block(at::cuda::getCurrentCUDAStream());
    launched_ = false;
    return 0.0;
  }

  void allreduce_sum(torch::Tensor t) override {
    if (world_ == 1) return;
    allreduce_sum_async(t, "all-reduce");
    wait_all();
  }

  void all_gather(torch::Tensor flat) override {
    CHECK(flat.is_cuda() && flat.is_contiguous() && flat.numel() % world_ == 0);
    if (world_ == 1) return;
    const int64_t n = flat.numel() / world_;
    auto* base = static_cast<char*>(flat.data_ptr());
    const size_t bytes = n * flat.element_size();
    issue("all-gather of the parameters", flat, [&](cudaStream_t s) {
      SAMOUT_NCCL_CHECK(ncclAllGather(base + rank_ * bytes, base, bytes, ncclUint8, comm_, s));
    });
    count_sent(ring_share(flat.nbytes()));
    wait_all();
  }

  void broadcast(torch::Tensor t, int root) override {
    CHECK(t.is_cuda() && t.is_contiguous());
    if (world_ == 1) return;
    issue("broadcast", t, [&](cudaStream_t s) {
      SAMOUT_NCCL_CHECK(
          ncclBroadcast(t.data_ptr(), t.data_ptr(), t.nbytes(), ncclUint8, root, comm_, s));
    });
    count_sent(static_cast<double>(t.nbytes()));
    wait_all();
  }

 private:
  // Orders the collective on `t` after the compute stream's work so far, enqueues it on the
  // collective stream, and hands its completion event to the watchdog.
  template <typename F>
  void issue(const std::string& what, const torch::Tensor& t, F&& enqueue) {
    c10::cuda::CUDAGuard guard(device_);
    at::cuda::CUDAEvent ready;
    ready.record(at::cuda::getCurrentCUDAStream());
    ready.block(stream_);
    enqueue(stream_.stream());
    auto done = std::make_shared<at::cuda::CUDAEvent>();
    done->record(stream_);
    watchdog_->watch("NCCL " + what, step_, [done] { return done->query(); });
    t.record_stream(stream_);  // the caching allocator must not reuse it before the collective
    launched_ = true;
  }

  std::string async_error() const {
    if (aborted_) return "";
    ncclResult_t async = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm_, &async);
    if (rc != ncclSuccess)
      return std::string("ncclCommGetAsyncError failed: ") + ncclGetErrorString(rc);
    if (async != ncclSuccess && async != ncclInProgress)
      return std::string("asynchronous error: ") + ncclGetErrorString(async);
    return "";
  }

  int rank_;
  c10::DeviceIndex device_;
  ncclComm_t comm_ = nullptr;
  c10::cuda::CUDAStream stream_;
  std::unique_ptr<Watchdog> watchdog_;
  std::atomic<bool> aborted_{false};
  bool launched_ = false;
};

}  // namespace

bool nccl_compiled() { return true; }

ncclDataType_t nccl_datatype(torch::ScalarType t) {
  static const std::map<torch::ScalarType, ncclDataType_t> types = {
      {torch::kFloat, ncclFloat32},
      {torch::kDouble, ncclFloat64},
      {torch::kBFloat16, ncclBfloat16},
      {torch::kLong, ncclInt64},
      {torch::kInt, ncclInt32}};
  const auto it = types.find(t);
  TORCH_CHECK(it != types.end(), "NCCL communicator: unsupported dtype ", t);
  return it->second;
}

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm, const torch::Device& device,
                                                     double timeout_s) {
  int rank = 0, size = 1;
  SAMOUT_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  SAMOUT_MPI_CHECK(MPI_Comm_size(comm, &size));
  return std::make_unique<NcclCommunicator>(comm, rank, size, device, timeout_s);
}

}  // namespace samout::dist
