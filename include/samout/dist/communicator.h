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

  // ZeRO-1. `flat` is split into world() equal blocks (its numel divides by world()); afterwards
  // every rank holds rank r's block r. Ordered like wait_all().
  virtual void all_gather(torch::Tensor flat) = 0;

  // In-place sum and broadcast from `root`, complete (in the sense of wait_all()) on return.
  virtual void allreduce_sum(torch::Tensor t) = 0;
  virtual void broadcast(torch::Tensor t, int root) = 0;

  int world() const { return world_; }
  // The training step that collectives issued from now on belong to (for messages).
  void set_step(int64_t step) { step_ = step; }

 protected:
  Communicator(int world, double timeout_s) : world_(world), timeout_s_(timeout_s) {}
  int world_;
  double timeout_s_;
  int64_t step_ = 0;
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

// The element types the communicators carry (fp32, fp64, int32, int64; NCCL also bf16); any other
// is an error naming it. Shared with bench/dist, whose baselines call MPI and NCCL directly.
MPI_Datatype mpi_datatype(torch::ScalarType t);
#ifdef SAMOUT_HAVE_NCCL
ncclDataType_t nccl_datatype(torch::ScalarType t);
#endif

}  // namespace samout::dist
