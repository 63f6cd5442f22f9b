// NCCL collectives for CUDA tensors: one communicator per job, its unique id broadcast over MPI,
// the collectives on a dedicated stream that waits on the compute stream through an event (no host
// sync), and the compute stream waiting on the collectives the same way.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <glog/logging.h>
#include <nccl.h>

#include <chrono>
#include <thread>

#include "samout/dist/checks.h"
#include "samout/dist/communicator.h"

namespace samout::dist {

namespace {

ncclDataType_t nccl_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return ncclFloat32;
    case torch::kDouble: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kLong: return ncclInt64;
    case torch::kInt: return ncclInt32;
    default: TORCH_CHECK(false, "NCCL communicator: unsupported dtype ", t.scalar_type());
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const DistContext& ctx, double timeout_s)
      : Communicator(ctx.world, timeout_s),
        rank_(ctx.rank),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, ctx.device.index())) {
    ncclUniqueId id;
    if (ctx.rank == 0) SAMOUT_NCCL_CHECK(ncclGetUniqueId(&id));
    SAMOUT_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
    SAMOUT_NCCL_CHECK(ncclCommInitRank(&comm_, ctx.world, id, ctx.rank));
  }

  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  void allreduce_sum_async(torch::Tensor flat) override {
    CHECK(flat.is_cuda() && flat.is_contiguous());
    if (world_ == 1) return;
    auto compute = at::cuda::getCurrentCUDAStream();
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(stream_);  // the collective starts once the gradients are written
    SAMOUT_NCCL_CHECK(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), flat.numel(), nccl_type(flat),
                                    ncclSum, comm_, stream_.stream()));
    flat.record_stream(stream_);
    launched_ = true;
  }

  void progress() override {}

  double wait_all() override {
    if (!launched_) return 0.0;
    const auto start = std::chrono::steady_clock::now();
    // The previous step's collectives must have finished by now; if not, a peer is gone.
    if (last_done_) watch(*last_done_);
    last_done_ = std::make_unique<at::cuda::CUDAEvent>();
    last_done_->record(stream_);
    last_done_->block(at::cuda::getCurrentCUDAStream());  // the optimizer waits on the GPU, not here
    launched_ = false;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  void allreduce_sum(torch::Tensor t) override {
    if (world_ == 1) return;
    allreduce_sum_async(t);
    wait_all();
    watch(*last_done_);
  }

  void all_gather(torch::Tensor flat) override {
    CHECK(flat.is_cuda() && flat.is_contiguous() && flat.numel() % world_ == 0);
    if (world_ == 1) return;
    const int64_t n = flat.numel() / world_;
    run_on_comm_stream([&](cudaStream_t s) {
      auto* base = static_cast<char*>(flat.data_ptr());
      SAMOUT_NCCL_CHECK(ncclAllGather(base + rank_ * n * flat.element_size(), base, n,
                                      nccl_type(flat), comm_, s));
    });
  }

  void broadcast(torch::Tensor t, int root) override {
    if (world_ == 1) return;
    run_on_comm_stream([&](cudaStream_t s) {
      SAMOUT_NCCL_CHECK(
          ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), root, comm_, s));
    });
  }

 private:
  // A blocking collective: ordered after the compute stream's work, then awaited with a deadline
  // and the compute stream made to wait on it.
  template <typename F>
  void run_on_comm_stream(F&& issue) {
    auto compute = at::cuda::getCurrentCUDAStream();
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(stream_);
    issue(stream_.stream());
    at::cuda::CUDAEvent done;
    done.record(stream_);
    watch(done);
    done.block(compute);
  }

  // Host wait with a deadline: polls the event and NCCL's asynchronous error; on error or timeout
  // the communicator is aborted so that the kernels return, then the job is brought down.
  void watch(at::cuda::CUDAEvent& ev) {
    const auto start = std::chrono::steady_clock::now();
    while (!ev.query()) {
      ncclResult_t async = ncclSuccess;
      SAMOUT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (async != ncclSuccess || (timeout_s_ > 0 && waited > timeout_s_)) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        abort_job(async != ncclSuccess ? std::string("NCCL error: ") + ncclGetErrorString(async)
                                       : "NCCL collective did not complete within --comm_timeout_s");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  int rank_;
  ncclComm_t comm_ = nullptr;
  c10::cuda::CUDAStream stream_;
  std::unique_ptr<at::cuda::CUDAEvent> last_done_;
  bool launched_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const DistContext& ctx, double timeout_s) {
  return std::make_unique<NcclCommunicator>(ctx, timeout_s);
}

}  // namespace samout::dist
