// Gradient all-reduce in buckets, overlapped with backward (the scheme of PyTorch DDP).
//
// Layout. Every parameter becomes a view into one flat fp32 buffer, its .grad a view into a second
// one, in reverse registration order (head first: roughly the order backward produces gradients).
// The gradient buffer is cut into buckets of about --bucket_mb, each one contiguous collective with
// no packing copy, and the optimizer works on the two flat buffers in one pass.
//
// Overlap. A post-hook on each parameter's AccumulateGrad node counts the gradients a bucket still
// waits for; on the last micro-step a bucket's all-reduce starts once it and all buckets before it
// are complete (bucket order, the same on every rank whatever order the hooks fire in), while
// backward goes on. Earlier micro-steps only accumulate locally.
//
// ZeRO-1 (zero = true). The flat buffers are padded to a multiple of the world size and split into
// one equal contiguous shard per rank (the layout optimizer checkpoints are saved in). Each bucket
// is reduce-scattered instead, launched as above, in parts cut at the shard boundaries: after
// finish() only this rank's shard of the gradient buffer holds sums (the rest is unspecified).
// Rank r's optimizer updates its shard only, with state for 1/W of the parameters, and
// all_gather_params() brings every rank the others' updated shards.
//
// Held launches (hold_buckets_until_finish). With context parallelism the model's own collectives
// (the gate's all-gathers, on the group's communicator) run inside backward. NCCL may deadlock when
// two communicators' collectives are in flight in different orders on different ranks, and when a
// bucket becomes ready relative to them is up to each rank's autograd. Held, every bucket is
// launched by finish(), after backward and so after its last group collective: every rank issues
// [group all-gathers of backward, in layer order] then [buckets, in bucket order], one sequence,
// the same on all, each collective waiting (through the compute stream) for the one before.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "samout/dist/communicator.h"

namespace samout::dist {

class GradReducer {
 public:
  // Moves the parameters' storage into the flat buffer (values kept) and installs the hooks.
  GradReducer(std::vector<torch::Tensor> params, Communicator& comm, int64_t bucket_bytes, int rank,
              bool zero);
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Zeroes the flat gradient buffer; call before the first micro-step of a step.
  void zero_grad();
  // Held: no bucket is launched during backward, all of them by finish() (see above).
  void hold_buckets_until_finish(bool hold);
  // Call before each backward. `sync`: this is the step's last micro-step, so buckets all-reduce.
  void begin_backward(bool sync);
  // After the last backward: starts any bucket still waiting, and waits for all of them (the
  // host-side wait is returned in seconds). Afterwards the gradients hold the sums over ranks
  // (ZeRO-1: those of this rank's shard).
  double finish();

  // Rank 0's values become everyone's (at start-up, so all ranks begin from the same weights).
  void broadcast_params(int root = 0);
  // ZeRO-1: after each rank updated its shard, every rank gets all shards.
  void all_gather_params();

  torch::Tensor flat_params() const { return flat_params_; }  // [padded numel]
  torch::Tensor flat_grads() const { return flat_grads_; }
  int64_t numel() const { return numel_; }  // parameters, without the padding
  // The range of the flat layout this rank updates: everything, or its ZeRO-1 shard.
  int64_t shard_begin() const { return shard_begin_; }
  int64_t shard_end() const { return shard_end_; }
  bool zero() const { return zero_; }
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // [begin, end) of each bucket in the flat buffers, and the order of the last step's launches.
  std::vector<std::pair<int64_t, int64_t>> bucket_ranges() const;
  const std::vector<int64_t>& launch_order() const { return launch_order_; }

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // range in the flat buffers
    int64_t num_params = 0;
    int64_t waiting = 0;         // gradients not yet produced in the current backward
    std::vector<int64_t> parts;  // ZeRO-1: elements in each rank's shard, in rank order
  };
  static std::vector<int64_t> shard_parts(int64_t begin, int64_t end, int64_t block, int64_t W);
  void on_grad_ready(int64_t bucket);
  void launch(int64_t index);

  Communicator& comm_;
  std::vector<torch::Tensor> params_;
  torch::Tensor flat_params_, flat_grads_;
  std::vector<Bucket> buckets_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // keep the hooks alive
  bool sync_ = true, hold_ = false;
  int64_t next_launch_ = 0;            // buckets before it are launched this backward
  std::vector<int64_t> launch_order_;  // cleared by begin_backward
  bool zero_ = false;
  int64_t numel_ = 0, shard_begin_ = 0, shard_end_ = 0;
};

}  // namespace samout::dist
