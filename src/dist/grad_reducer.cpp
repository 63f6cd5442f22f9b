#include "samout/dist/grad_reducer.h"

#include <glog/logging.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include <algorithm>
#include <string>

namespace samout::dist {

GradReducer::GradReducer(std::vector<torch::Tensor> params, Communicator& comm,
                         int64_t bucket_bytes, int rank, bool zero)
    : comm_(comm), params_(std::move(params)), zero_(zero) {
  CHECK(!params_.empty());
  std::reverse(params_.begin(), params_.end());  // backward meets the head first
  int64_t total = 0;
  for (const auto& p : params_) total += p.numel();
  numel_ = total;
  const int64_t W = comm.world();
  const int64_t padded = (total + W - 1) / W * W;  // equal shards for ZeRO-1's collectives
  shard_end_ = total;
  if (zero_) {
    shard_begin_ = std::min(total, rank * (padded / W));
    shard_end_ = std::min(total, (rank + 1) * (padded / W));
  }
  const auto opts = params_[0].options().dtype(torch::kFloat32);
  flat_params_ = torch::zeros({padded}, opts);
  flat_grads_ = torch::zeros({padded}, opts);

  const int64_t bucket_elems = std::max<int64_t>(1, bucket_bytes / 4);
  int64_t offset = 0;
  torch::NoGradGuard no_grad;
  for (auto& p : params_) {
    const int64_t n = p.numel();
    if (buckets_.empty() || buckets_.back().end - buckets_.back().begin >= bucket_elems)
      buckets_.push_back(Bucket{offset, offset, 0, 0, {}});
    Bucket& b = buckets_.back();
    b.end = offset + n;
    ++b.num_params;
    if (zero_) b.parts = shard_parts(b.begin, b.end, padded / W, W);

    auto pview = flat_params_.narrow(0, offset, n).view(p.sizes());
    pview.copy_(p);
    p.set_data(pview);  // the module's parameter now lives in the flat buffer
    p.mutable_grad() = flat_grads_.narrow(0, offset, n).view(p.sizes());
    offset += n;

    // AccumulateGrad adds into the existing .grad in place (it is defined and backward runs
    // without grad mode), so after this hook the bucket's range holds the parameter's gradient.
    const int64_t bucket = static_cast<int64_t>(buckets_.size()) - 1;
    auto acc = torch::autograd::impl::grad_accumulator(p);
    acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, bucket](const torch::autograd::variable_list& outputs,
                       const torch::autograd::variable_list&) {
          on_grad_ready(bucket);
          return outputs;
        }));
    accumulators_.push_back(std::move(acc));
  }
  LOG(INFO) << "gradient buckets: " << buckets_.size() << " over " << total << " parameters";
}

// How much of [begin, end) falls into each rank's shard (blocks of `block` elements): the parts
// of the bucket's reduce-scatter, consecutive, in rank order.
std::vector<int64_t> GradReducer::shard_parts(int64_t begin, int64_t end, int64_t block,
                                              int64_t W) {
  std::vector<int64_t> parts(W);
  for (int64_t q = 0; q < W; ++q)
    parts[q] = std::max<int64_t>(0, std::min(end, (q + 1) * block) - std::max(begin, q * block));
  return parts;
}

void GradReducer::zero_grad() { flat_grads_.zero_(); }

void GradReducer::hold_buckets_until_finish(bool hold) { hold_ = hold; }

void GradReducer::begin_backward(bool sync) {
  sync_ = sync;
  next_launch_ = 0;
  launch_order_.clear();
  for (auto& b : buckets_) b.waiting = b.num_params;
}

void GradReducer::on_grad_ready(int64_t bucket) {
  --buckets_[bucket].waiting;
  if (!sync_ || hold_) return;
  // Collectives must be issued in the same order on every rank, and the order in which hooks fire
  // may differ between ranks (autograd's scheduling, unused parameters): launch buckets strictly in
  // bucket order, each as soon as it and every bucket before it are ready, as PyTorch DDP does.
  while (next_launch_ < num_buckets() && buckets_[next_launch_].waiting == 0)
    launch(next_launch_++);
  comm_.progress();
}

void GradReducer::launch(int64_t index) {
  const Bucket& b = buckets_[index];
  auto grads = flat_grads_.narrow(0, b.begin, b.end - b.begin);
  const std::string name =
      "gradient bucket " + std::to_string(index + 1) + "/" + std::to_string(num_buckets());
  // ZeRO-1: a rank needs only its shard's sums. Each bucket is reduce-scattered as it completes,
  // in parts that follow the shard boundaries (most buckets lie in one or two shards), so the
  // collectives still overlap backward and each rank receives only its part: with the all-gather
  // of the parameters, the bytes of one all-reduce, not 1.5.
  if (zero_) {
    comm_.reduce_scatter_sum_async(grads, b.parts, "reduce-scatter of " + name);
  } else {
    comm_.allreduce_sum_async(grads, "all-reduce of " + name);
  }
  launch_order_.push_back(index);
}

double GradReducer::finish() {
  // Buckets still waiting (a parameter that got no gradient must not stall the step), in order.
  while (next_launch_ < num_buckets()) launch(next_launch_++);
  return comm_.wait_all();
}

std::vector<std::pair<int64_t, int64_t>> GradReducer::bucket_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> r;
  for (const auto& b : buckets_) r.emplace_back(b.begin, b.end);
  return r;
}

void GradReducer::all_gather_params() {
  torch::NoGradGuard no_grad;
  if (zero_) comm_.all_gather(flat_params_);
}

void GradReducer::broadcast_params(int root) {
  torch::NoGradGuard no_grad;
  comm_.broadcast(flat_params_, root);
}

}  // namespace samout::dist
