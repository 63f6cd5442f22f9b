// samout_generate: text from a checkpoint, streamed to stdout token by token.
//   samout_generate --checkpoint=runs/ckpt --prompt="Once upon a time" --max_tokens=200
//   samout_generate --checkpoint=runs/ckpt/step_00001000 --prompts_file=prompts.txt --seed=7
// Every token after the prompt is one step with the carried state (model/session.h), as cheap at
// any context length. --prompts_file (a prompt a line) generates them as one batch and prints a
// JSON line {"prompt", "completion", "prompt_ids", "ids"} per prompt at the end.
#include <gflags/gflags.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "samout/ckpt/state.h"
#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/flags_check.h"
#include "samout/common/strings.h"
#include "samout/data/documents.h"
#include "samout/data/h5.h"
#include "samout/data/tokenizer.h"
#include "samout/model/generation.h"
#include "samout/model/samout.h"

DEFINE_string(checkpoint, "",
              "a checkpoint folder (step_NNNNNNNN) or a --ckpt_dir (its newest valid one)");
DEFINE_string(prompt, "", "the text to continue");
DEFINE_string(prompts_file, "",
              "a file of prompts, one a line, generated as one batch (JSON lines out)");
DEFINE_string(tokenizer, "",
              "a SentencePiece .model to use instead of the checkpoint's tokenizer.model");
DEFINE_int64(max_tokens, 128, "tokens to generate per prompt (fewer when eos comes first)");
DEFINE_double(temperature, 1.0, "softmax temperature; 0 = greedy");
DEFINE_int64(top_k, 0, "sample among the k most likely tokens; 0 = all");
DEFINE_double(top_p, 1.0,
              "sample among the smallest set of most likely tokens with mass >= p; 1 = all");
DEFINE_double(repetition_penalty, 1.0,
              "CTRL-style penalty on tokens already in the context; 1 = off");
DEFINE_uint64(seed, 0, "seed of the sampler (same seed, same checkpoint, same flags: same text)");
DEFINE_string(device, "cpu", "cpu or cuda");
DEFINE_bool(cuda_graph, true, "on CUDA, replay each step as one captured CUDA graph");
DEFINE_bool(stop_at_eos, true, "end a sequence when it generates eos");
DEFINE_bool(prefix_eos, true,
            "start the context with eos, as every document follows one in training");
DEFINE_int32(threads, 0, "CPU threads for torch (0 = torch's default)");
DEFINE_string(
    format, "",
    "text: the completion streamed as it comes | jsonl: a line per prompt with "
    "prompt, completion, prompt_ids, ids at the end (default: text for --prompt, jsonl for "
    "--prompts_file)");
DEFINE_bool(stats, false, "print prefill time, tokens/s and ms/token to stderr at the end");

namespace {

using samout::require;
using samout::seconds_since;

std::string tokenizer_path(const std::string& dir) {
  const std::string path = FLAGS_tokenizer.empty() ? dir + "/tokenizer.model" : FLAGS_tokenizer;
  require(std::filesystem::exists(path),
          FLAGS_tokenizer.empty()
              ? dir + " has no tokenizer.model (trained on random: data?); give --tokenizer=PATH"
              : "--tokenizer=" + path + ": no such file");
  return path;
}

std::vector<std::string> read_prompts() {
  std::vector<std::string> prompts;
  if (!FLAGS_prompts_file.empty()) {
    std::ifstream in(FLAGS_prompts_file);
    require(in.good(), "--prompts_file=" + FLAGS_prompts_file + ": cannot open");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) prompts.push_back(line);
    require(!prompts.empty(), "--prompts_file=" + FLAGS_prompts_file + ": no prompts in it");
  } else {
    require(!FLAGS_prompt.empty(),
            "--prompt is empty: give the text to continue (or --prompts_file)");
    prompts.push_back(FLAGS_prompt);
  }
  for (auto& prompt : prompts) {
    if (const int64_t n = samout::data::sanitize_utf8(&prompt))
      std::fprintf(
          stderr,
          "samout_generate: warning: prompt: %ld bytes of invalid UTF-8 replaced by U+FFFD\n",
          static_cast<long>(n));
  }
  return prompts;
}

int run() {
  require(FLAGS_prompt.empty() || FLAGS_prompts_file.empty(),
          "give --prompt or --prompts_file, not both");
  require(FLAGS_max_tokens > 0,
          "--max_tokens must be > 0, got " + std::to_string(FLAGS_max_tokens));
  require(FLAGS_threads >= 0 && FLAGS_threads <= 1024,
          "--threads must be in [0, 1024], got " + std::to_string(FLAGS_threads));
  require(FLAGS_device == "cpu" || FLAGS_device == "cuda",
          "--device must be cpu or cuda, got '" + FLAGS_device + "'");
  samout::model::SamplingConfig sc;
  sc.temperature = FLAGS_temperature;
  sc.top_k = FLAGS_top_k;
  sc.top_p = FLAGS_top_p;
  sc.repetition_penalty = FLAGS_repetition_penalty;
  sc.validate();
  const auto prompts = read_prompts();
  const std::string format = !FLAGS_format.empty()        ? FLAGS_format
                             : FLAGS_prompts_file.empty() ? "text"
                                                          : "jsonl";
  require(format == "text" || format == "jsonl",
          "--format must be text or jsonl, got '" + format + "'");
  require(!FLAGS_checkpoint.empty(), "--checkpoint is required");
  const std::string dir = samout::ckpt::resolve_checkpoint(FLAGS_checkpoint, "--checkpoint");
  require(FLAGS_device != "cuda" || torch::cuda::is_available(),
          "--device=cuda: no CUDA device available");
  if (FLAGS_threads > 0) torch::set_num_threads(FLAGS_threads);
  const torch::Device device(FLAGS_device == "cuda" ? torch::kCUDA : torch::kCPU);

  samout::model::SamOut model(samout::ckpt::read_state(dir).run.model_config());
  samout::ckpt::load_into(*model, samout::ckpt::read_weights(dir + "/model.h5"), dir + "/model.h5");
  model->to(device);
  const int64_t V = model->config().vocab_size;
  const std::string tok_path = tokenizer_path(dir);
  const auto tok = samout::data::Tokenizer::from_file(tok_path);
  require(tok.meta().vocab_size <= V, tok_path + ": vocabulary of " +
                                          std::to_string(tok.meta().vocab_size) +
                                          " does not fit the model's " + std::to_string(V));
  const int eos = static_cast<int>(tok.meta().eos_id);

  // Prompts to ids, prefilled as one batch.
  const int64_t B = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int>> prompt_ids(B);
  int64_t prompt_tokens = 0;
  for (int64_t b = 0; b < B; ++b) {
    auto& ids = prompt_ids[b];
    tok.encode(prompts[b], &ids);
    require(!ids.empty(), "prompt " + std::to_string(b + 1) + " encodes to no tokens");
    if (FLAGS_prefix_eos && eos >= 0) ids.insert(ids.begin(), eos);
    prompt_tokens += static_cast<int64_t>(ids.size());
  }
  samout::model::Session session(model, FLAGS_cuda_graph);
  const auto t0 = std::chrono::steady_clock::now();
  auto logits = samout::model::prefill_batch(session, prompt_ids);  // (B, V)
  const double prefill_s = seconds_since(t0);

  samout::model::Sampler sampler(sc, FLAGS_seed);
  samout::model::GenerationConfig gc;
  gc.max_tokens = FLAGS_max_tokens;
  gc.eos = FLAGS_stop_at_eos ? eos : -1;
  samout::model::OnText print;
  if (format == "text")
    print = [](int64_t, const std::string& piece, bool last) {
      std::cout << piece << (last ? "\n" : "") << std::flush;
    };
  const auto t1 = std::chrono::steady_clock::now();
  const auto out = samout::model::generate(
      session, sampler, prompt_ids, logits, gc,
      [&](const std::vector<int>& ids) { return tok.decode(ids); }, print);
  if (format == "jsonl") {
    for (int64_t b = 0; b < B; ++b)
      std::cout << nlohmann::json{{"prompt", prompts[b]},
                                  {"completion", out.text[b]},
                                  {"prompt_ids", prompt_ids[b]},
                                  {"ids", out.ids[b]}}
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
  }
  const double gen_s = seconds_since(t1);
  if (FLAGS_stats) {
    std::cerr << "prefill: " << prompt_tokens << " tokens in " << prefill_s * 1e3
              << " ms; generated " << out.tokens << " tokens (" << out.steps << " steps of batch "
              << B << ") in " << gen_s << " s: " << (gen_s > 0 ? out.tokens / gen_s : 0.0)
              << " tokens/s, " << (out.steps > 0 ? gen_s / out.steps * 1e3 : 0.0) << " ms/step"
              << (session.graph_captured() ? " (CUDA graph)" : "") << "\n";
  }
  return samout::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  samout::data::init_hdf5_for_main();  // before any HDF5 call: no stack printing, no exit handler
  samout::start_program("samout_generate", "generate text from a SamOut checkpoint", &argc, &argv);
  return samout::run_program("samout_generate", run);
}
