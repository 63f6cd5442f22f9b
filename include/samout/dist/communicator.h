// The collectives the trainer needs, behind one small interface, in two implementations:
//   - MPI: CPU tensors through MPI_I* collectives polled with MPI_Test; CUDA tensors staged through
//     pinned host buffers (--comm=mpi: ranks sharing one GPU, which NCCL refuses, for testing).
//   - NCCL: its unique id broadcast over MPI, collectives on their own stream, ordered against the
//     compute stream by events both ways: the host never blocks on one. A watchdog thread
//     (dist/watchdog.h) enforces the deadline and checks NCCL's asynchronous errors instead.
// Every collective has a deadline (--comm_timeout_s): a peer that died or hangs brings the job down
// with a message naming the collective and the step, never a hang. Collectives must be issued in
// the same order on every rank (hence GradReducer's bucket order).
#pragma once

#include <mpi.h>
#ifdef SAMOUT_HAVE_NCCL
#include <nccl.h>
#endif
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "samout/dist/context.h"

namespace samout::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;

  // Starts an in-place sum over ranks of `flat` (contiguous). Completion is observed by wait_all().
  // `what` names it in timeout and error messages.
  virtual void allreduce_sum_async(torch::Tensor flat, const std::string& what = "all-reduce") = 0;
  // Drives outstanding collectives forward without blocking (MPI progresses only inside calls).
  virtual void progress() = 0;
  // Everything issued after this call sees the results of every collective started so far. MPI
  // waits on the host; NCCL makes the compute stream wait (the host goes on). Returns the seconds
  // the host spent waiting.
  virtual double wait_all() = 0;

  // ZeRO-1's gradient sum. `flat` (contiguous) is cut into world() consecutive parts of
  // counts[q] elements (they sum to its numel; any may be 0). Once wait_all() has run, this rank's
  // part holds the sum over ranks of that part; the other parts hold unspecified values.
  virtual void reduce_scatter_sum_async(torch::Tensor flat, const std::vector<int64_t>& counts,
                                        const std::string& what = "reduce-scatter") = 0;

  // ZeRO-1. `flat` is split into world() equal blocks (its numel divides by world()); afterwards
  // every rank holds rank r's block r. Ordered like wait_all(). Moves bytes: any dtype.
  virtual void all_gather(torch::Tensor flat) = 0;

  // In-place sum and broadcast from `root`, complete (in the sense of wait_all()) on return. The
  // broadcast moves bytes: any dtype.
  virtual void allreduce_sum(torch::Tensor t) = 0;
  virtual void broadcast(torch::Tensor t, int root) = 0;

  int world() const { return world_; }
  // The training step that collectives issued from now on belong to (for messages).
  void set_step(int64_t step) { step_ = step; }
  // Bytes this rank has sent in collectives so far, counted as the ring algorithms send them
  // (nccl-tests' bus-bandwidth convention): an all-reduce of B bytes 2 (W-1)/W B, a reduce-scatter
  // or an all-gather of B bytes in all (W-1)/W B, a broadcast B. The same figure on every rank.
  double bytes_sent() const { return bytes_sent_; }

 protected:
  Communicator(int world, double timeout_s) : world_(world), timeout_s_(timeout_s) {}
  // What a ring reduce-scatter or all-gather of `bytes` in all sends from each rank.
  double ring_share(size_t bytes) const {
    return static_cast<double>(bytes) * (world_ - 1) / world_;
  }
  void count_sent(double bytes) {
    if (world_ > 1) bytes_sent_ += bytes;
  }
  int world_;
  double timeout_s_;
  int64_t step_ = 0;
  double bytes_sent_ = 0;
};

// The communicator of ctx.comm; a world of one gets MPI's, whose collectives return at once.
std::unique_ptr<Communicator> make_communicator(const DistContext& ctx, double timeout_s);

// The communicator of a group of `group_size` consecutive ranks (rank r is in group r / group_size,
// at index r % group_size): context parallelism's. Collective over all ranks (MPI_Comm_split).
std::unique_ptr<Communicator> make_group_communicator(const DistContext& ctx, int group_size,
                                                      double timeout_s);

// NCCL over the ranks of `comm` (MPI_COMM_WORLD or a group's), used only to share the unique id.
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm, const torch::Device& device,
                                                     double timeout_s);
bool nccl_compiled();

// The element types the communicators sum (fp32, fp64, int32, int64; NCCL also bf16); any other
// is an error naming it. Shared with bench/dist, whose baselines call MPI and NCCL directly.
// Collectives that only move data (all-gather, broadcast) take any dtype: they send its elements
// as unsigned integers of the same width (or bytes), never converted.
MPI_Datatype mpi_datatype(torch::ScalarType t);
#ifdef SAMOUT_HAVE_NCCL
ncclDataType_t nccl_datatype(torch::ScalarType t);
#endif

}  // namespace samout::dist
