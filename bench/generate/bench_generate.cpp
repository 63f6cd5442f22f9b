// bench_generate: the cost of one generated token with the carried state, against the cost of
// reading the weights once from memory, and against the length of the context.
//
//   bench_generate                                  (seed-size model, random weights, CPU)
//   bench_generate --device=cuda --cuda_graph       (H100: one graph replay per token)
//
// Per context length C (--contexts): a session prefilled with C random tokens. Then --tokens
// rounds; in each, every session takes one timed step (Session::step + a greedy pick + the id
// copied to the host, what samout_generate does per token) and the baseline runs once. Time per
// token must not grow with C: the context is never re-run. Baseline, in the same run: the time to
// stream once every byte a step must read (every parameter but the embedding table, of which a step
// reads one row), as a sum over each weight tensor. The ratio step / baseline is the figure of
// merit (target <= 1.5 on CPU). On the CPU a further session, at the first context length, steps
// in the same rounds with every product on at::linear instead of the GEMV (ops::AtLinearOnlyGuard):
// the GEMV's baseline, printed as a ratio.
#include <gflags/gflags.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "samout/common/strings.h"
#include "samout/model/sampler.h"
#include "samout/model/session.h"
#include "samout/ops/linear.h"

DEFINE_int64(vocab_size, 8460, "V");
DEFINE_int64(hidden, 512, "d");
DEFINE_int64(layers, 8, "L");
DEFINE_int64(heads, 8, "h");
DEFINE_string(contexts, "100,1000,10000",
              "context lengths (tokens prefilled before the timed steps)");
DEFINE_int64(tokens, 200, "timed steps per context length");
DEFINE_int64(warmup, 20, "untimed steps before them");
DEFINE_int32(threads, 0, "torch CPU threads (0 = torch's default)");
DEFINE_string(device, "cpu", "cpu or cuda");
DEFINE_bool(cuda_graph, true, "on CUDA, replay each step as a captured CUDA graph");
DEFINE_uint64(seed, 0, "seed of the random weights and tokens");

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  for (const auto& item : samout::split_list(s)) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "time per generated token vs reading the weights once, and vs context length");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (FLAGS_threads > 0) torch::set_num_threads(FLAGS_threads);
  torch::manual_seed(FLAGS_seed);
  const torch::Device device(FLAGS_device == "cuda" ? torch::kCUDA : torch::kCPU);
  torch::InferenceMode inference;

  samout::model::ModelConfig cfg;
  cfg.vocab_size = FLAGS_vocab_size;
  cfg.hidden = FLAGS_hidden;
  cfg.layers = FLAGS_layers;
  cfg.heads = FLAGS_heads;
  samout::model::SamOut model(cfg);
  model->to(device);

  // ---- Baseline: stream the weights a step reads, once ----------------------------------------
  std::vector<torch::Tensor> touched;
  int64_t bytes = 0;
  for (const auto& p : model->named_parameters()) {
    if (p.key() == "em.weight") continue;  // a step reads one row of it
    touched.push_back(p.value());
    bytes += p.value().numel() * p.value().element_size();
  }
  auto stream_once = [&] {
    torch::Tensor acc = torch::zeros({}, torch::TensorOptions().device(device));
    for (const auto& t : touched) acc += t.sum();
    return acc.item<float>();  // the sums must all be done
  };

  std::printf("model: V=%lld d=%lld L=%lld h=%lld, %lld parameters, device %s, threads %d%s\n",
              (long long)cfg.vocab_size, (long long)cfg.hidden, (long long)cfg.layers,
              (long long)cfg.heads, (long long)cfg.num_parameters(), FLAGS_device.c_str(),
              torch::get_num_threads(), device.is_cuda() && FLAGS_cuda_graph ? ", CUDA graph" : "");

  // ---- Sessions at each context length, stepped in turn -----------------------------------------
  // Round-robin: in each round every session takes one step and the baselines run once, so a
  // change in the machine's load (it is shared) hits every column alike.
  const auto contexts = parse_list(FLAGS_contexts);
  std::vector<std::unique_ptr<samout::model::Session>> sessions;
  std::vector<torch::Tensor> prompts, next;
  std::vector<double> prefill_ms;
  for (int64_t C : contexts) {
    sessions.push_back(std::make_unique<samout::model::Session>(model, FLAGS_cuda_graph));
    prompts.push_back(torch::randint(0, cfg.vocab_size, {1, C}, torch::kLong));
    const auto& prompt = prompts.back();
    sync(device);
    auto t0 = Clock::now();
    auto logits = sessions.back()->prefill(prompt);
    sync(device);
    prefill_ms.push_back(ms_since(t0));
    next.push_back(logits.argmax(-1));
  }
  const size_t S = sessions.size();
  // The GEMV's baseline: the first context's prompt, every product on at::linear.
  const bool vs_linear = !device.is_cuda();
  samout::model::Session linear_session(model);
  torch::Tensor linear_next;
  if (vs_linear) {
    samout::ops::AtLinearOnlyGuard at_linear;
    linear_next = linear_session.prefill(prompts.front()).argmax(-1);
  }
  std::vector<std::vector<double>> per(S);
  std::vector<double> base_ms, linear_ms;
  for (int64_t r = -FLAGS_warmup; r < FLAGS_tokens; ++r) {
    for (size_t i = 0; i < S; ++i) {
      auto t1 = Clock::now();
      next[i] = sessions[i]->step(next[i]).argmax(-1);
      next[i].item<int64_t>();  // the id on the host, as a streaming generator needs it
      if (r >= 0) per[i].push_back(ms_since(t1));
    }
    if (vs_linear) {
      samout::ops::AtLinearOnlyGuard at_linear;
      auto t1 = Clock::now();
      linear_next = linear_session.step(linear_next).argmax(-1);
      linear_next.item<int64_t>();
      if (r >= 0) linear_ms.push_back(ms_since(t1));
    }
    auto t2 = Clock::now();
    stream_once();
    if (r >= 0) base_ms.push_back(ms_since(t2));
  }
  const double base = median(base_ms);
  std::printf(
      "baseline: read the %.1f MB a step touches once (sum over each weight tensor): "
      "%.3f ms median of %zu (%.1f GB/s)\n",
      bytes / 1e6, base, base_ms.size(), bytes / 1e6 / base);
  std::printf("%10s %12s %14s %14s %12s %10s\n", "context", "prefill_ms", "ms/token(med)",
              "ms/token(mean)", "tokens/s", "vs_read");
  std::vector<double> medians;
  for (size_t i = 0; i < S; ++i) {
    const double med = median(per[i]);
    const double mean = std::accumulate(per[i].begin(), per[i].end(), 0.0) / per[i].size();
    medians.push_back(med);
    std::printf("%10lld %12.1f %14.3f %14.3f %12.1f %10.2f\n", (long long)contexts[i],
                prefill_ms[i], med, mean, 1e3 / mean, med / base);
  }
  const auto [lo, hi] = std::minmax_element(medians.begin(), medians.end());
  std::printf("flatness: slowest/fastest median over contexts = %.3f\n", *hi / *lo);
  std::printf("ratio: median ms/token (all contexts) / read-weights-once = %.2f (target <= 1.5)\n",
              median(medians) / base);
  if (vs_linear) {
    const double lin = median(linear_ms);
    std::printf(
        "products on at::linear instead of the GEMV, context %lld: %.3f ms/token median; "
        "at::linear / GEMV = %.2f (the GEMV is kept only if >= 1.3)\n",
        (long long)contexts.front(), lin, lin / medians.front());
  }

  // ---- The sampler's share: a full sampling pipeline instead of argmax
  // ---------------------------
  auto& session = *sessions.front();
  samout::model::SamplingConfig sc;
  sc.temperature = 0.8;
  sc.top_k = 50;
  sc.top_p = 0.9;
  sc.repetition_penalty = 1.1;
  samout::model::Sampler sampler(sc, FLAGS_seed);
  auto seen =
      torch::zeros({1, cfg.vocab_size}, torch::TensorOptions().dtype(torch::kBool).device(device));
  auto logits = session.prefill(torch::randint(0, cfg.vocab_size, {1, 100}, torch::kLong));
  std::vector<double> sampled;
  for (int64_t i = 0; i < FLAGS_tokens; ++i) {
    auto t1 = Clock::now();
    auto tok = sampler.sample(logits, seen);
    seen.scatter_(1, tok.unsqueeze(1), true);
    logits = session.step(tok);
    tok.item<int64_t>();
    sampled.push_back(ms_since(t1));
  }
  const double mean = std::accumulate(sampled.begin(), sampled.end(), 0.0) / sampled.size();
  std::printf(
      "with sampling (T=0.8, top-k 50, top-p 0.9, penalty 1.1): %.3f ms/token median, "
      "%.1f tokens/s\n",
      median(sampled), 1e3 / mean);
  return 0;
}
