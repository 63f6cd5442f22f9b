// The collectives the trainer needs, behind one small interface.
//
// Two implementations: MPI for CPU tensors (MPI_Iallreduce, progressed by test()), and NCCL for
// CUDA tensors (one communicator per job, its unique id broadcast over MPI, collectives on a
// dedicated stream ordered after the compute stream by events). Every wait has a deadline
// (--comm_timeout_s): a peer that died or hangs brings the job down with a message, never a hang.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "samout/dist/context.h"

namespace samout::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;

  // Starts an in-place sum over ranks of `flat` (contiguous). Completion is observed by wait_all().
  virtual void allreduce_sum_async(torch::Tensor flat) = 0;
  // Drives outstanding collectives forward without blocking (MPI progresses only inside calls).
  virtual void progress() = 0;
  // Waits for every collective started so far; returns the seconds spent waiting.
  virtual double wait_all() = 0;

  // ZeRO-1 (blocking). `flat` is split into world() equal blocks (its numel divides by world());
  // afterwards every rank holds rank r's block r.
  virtual void all_gather(torch::Tensor flat) = 0;

  // Blocking helpers (start-up, metrics): in-place sum, and broadcast from `root`.
  virtual void allreduce_sum(torch::Tensor t) = 0;
  virtual void broadcast(torch::Tensor t, int root) = 0;

  int world() const { return world_; }

 protected:
  Communicator(int world, double timeout_s) : world_(world), timeout_s_(timeout_s) {}
  int world_;
  double timeout_s_;
};

// MPI for a CPU context, NCCL for a CUDA one.
std::unique_ptr<Communicator> make_communicator(const DistContext& ctx, double timeout_s);

std::unique_ptr<Communicator> make_mpi_communicator(const DistContext& ctx, double timeout_s);
std::unique_ptr<Communicator> make_nccl_communicator(const DistContext& ctx, double timeout_s);

}  // namespace samout::dist
