// NCCL collectives for CUDA tensors (see communicator.h). On an asynchronous error or a missed
// deadline the watchdog aborts the communicator, so that its kernels return, and then the job.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <glog/logging.h>
#include <nccl.h>

#include <atomic>
#include <map>
#include <memory>

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
        });
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
    issue("all-gather of the parameters", flat, [&](cudaStream_t s) {
      SAMOUT_NCCL_CHECK(ncclAllGather(base + rank_ * n * flat.element_size(), base, n,
                                      nccl_datatype(flat.scalar_type()), comm_, s));
    });
    wait_all();
  }

  void broadcast(torch::Tensor t, int root) override {
    CHECK(t.is_cuda() && t.is_contiguous());
    if (world_ == 1) return;
    issue("broadcast", t, [&](cudaStream_t s) {
      SAMOUT_NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(),
                                      nccl_datatype(t.scalar_type()), root, comm_, s));
    });
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
