// The validation loss over the same --eval_batches every time, so that evaluations compare.
// First: torch's headers define a LOG of their own, which glog's (included after) replaces.
#include "trainer_impl.h"

#include <glog/logging.h>

#include <algorithm>

namespace samout::train {

void Trainer::evaluate(int64_t step) {
  torch::NoGradGuard no_grad;
  model_->eval();
  val_loader_->seek({0, 0});  // the same batches every time, so evaluations compare
  auto acc = torch::zeros({2}, torch::kDouble);
  for (int64_t i = 0; i < eval_batches_; ++i) {
    auto [inputs, targets] = my_tokens(upload(val_loader_->next()));
    AutocastScope autocast(cfg_.precision == Precision::kBf16);
    auto logits = model_->forward(inputs).to(torch::kFloat32);
    acc[0] += token_loss_sum(logits, targets).cpu().to(torch::kDouble);
    acc[1] += count_targets(targets).cpu();
  }
  model_->train();
  acc = sum_over_ranks(acc);
  const double val_loss = acc[0].item<double>() / std::max(1.0, acc[1].item<double>());
  metrics_->write(
      JsonLine().add("step", step).add("val_loss", val_loss).add("val_batches", eval_batches_));
  LOG_IF(INFO, ctx_.is_root()) << "step " << step << " | val loss " << val_loss << " over "
                               << eval_batches_ << " batches";
}

}  // namespace samout::train
