// samout_generate: text from a checkpoint, streamed to stdout token by token.
//   samout_generate --checkpoint=runs/ckpt --prompt="Once upon a time" --max_tokens=200
//   samout_generate --checkpoint=runs/ckpt/step_00001000 --prompts_file=prompts.txt --seed=7
// The prompt runs through the model once; every further token is one step with the carried state
// (samout/model/generate.h), so each costs the same however long the context. With --prompts_file
// (one prompt a line) the prompts are prefilled one by one, their states stacked into one batch,
// and each result printed as a JSON line {"prompt", "completion", "prompt_ids", "ids"} at the end.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "samout/ckpt/checkpoint.h"
#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/flags_check.h"
#include "samout/data/documents.h"
#include "samout/data/h5.h"
#include "samout/data/tokenizer.h"
#include "samout/model/generate.h"
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
namespace fs = std::filesystem;

std::string resolve_checkpoint(const std::string& path) {
  require(!path.empty(), "--checkpoint is required");
  require(fs::is_directory(path), "--checkpoint=" + path + ": no such folder");
  std::string dir = path;
  if (!fs::exists(dir + "/manifest.json")) {  // a ckpt_dir: take its newest valid checkpoint
    std::vector<std::string> skipped;
    dir = samout::ckpt::find_latest_valid(path, &skipped);
    for (const auto& s : skipped) LOG(WARNING) << "skipping checkpoint " << s;
    require(!dir.empty(), "--checkpoint=" + path + ": no valid checkpoint in it");
  }
  const std::string why = samout::ckpt::verify(dir);
  require(why.empty(), dir + ": " + why);
  return dir;
}

samout::model::SamOut load_model(const std::string& dir, const torch::Device& device) {
  const auto state = samout::ckpt::read_state(dir);
  require(state.contains("run"), dir + "/state.json: no \"run\" object");
  const auto& run = state["run"];
  samout::model::ModelConfig cfg;
  cfg.vocab_size = run.at("vocab_size").get<int64_t>();
  cfg.hidden = run.at("hidden").get<int64_t>();
  cfg.layers = run.at("layers").get<int64_t>();
  cfg.heads = run.at("heads").get<int64_t>();
  cfg.pad_id = run.value("pad_id", int64_t{-1});
  samout::model::SamOut model(cfg);
  samout::ckpt::load_into(*model, samout::ckpt::read_weights(dir + "/model.h5"), dir + "/model.h5");
  model->to(device);
  return model;
}

std::unique_ptr<samout::data::Tokenizer> load_tokenizer(const std::string& dir, int64_t vocab) {
  std::string path = FLAGS_tokenizer.empty() ? dir + "/tokenizer.model" : FLAGS_tokenizer;
  require(fs::exists(path),
          FLAGS_tokenizer.empty()
              ? dir + " has no tokenizer.model (trained on random: data?); give --tokenizer=PATH"
              : "--tokenizer=" + path + ": no such file");
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  require(in.good() || in.eof(), path + ": cannot read");
  auto tok = std::make_unique<samout::data::Tokenizer>(bytes, path);
  require(tok->meta().vocab_size <= vocab,
          path + ": vocabulary of " + std::to_string(tok->meta().vocab_size) +
              " does not fit the model's " + std::to_string(vocab));
  return tok;
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

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
  const std::string dir = resolve_checkpoint(FLAGS_checkpoint);
  require(FLAGS_device != "cuda" || torch::cuda::is_available(),
          "--device=cuda: no CUDA device available");
  if (FLAGS_threads > 0) torch::set_num_threads(FLAGS_threads);
  const torch::Device device(FLAGS_device == "cuda" ? torch::kCUDA : torch::kCPU);

  auto model = load_model(dir, device);
  const int64_t V = model->config().vocab_size;
  const auto tok = load_tokenizer(dir, V);
  const int eos = static_cast<int>(tok->meta().eos_id);

  // Prompts to ids; each prefilled alone (no padding can leak into a running max), then batched.
  const int64_t B = static_cast<int64_t>(prompts.size());
  samout::model::Session session(model, FLAGS_cuda_graph);
  auto seen = torch::zeros({B, V}, torch::TensorOptions().dtype(torch::kBool).device(device));
  std::vector<std::vector<int>> prompt_ids(B), out_ids(B);
  std::vector<torch::Tensor> first_logits;
  std::vector<samout::model::ModelState> states;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t prompt_tokens = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int> ids;
    if (FLAGS_prefix_eos && eos >= 0) ids.push_back(eos);
    std::vector<int> text_ids;
    tok->encode(prompts[b], &text_ids);
    require(!text_ids.empty(), "prompt " + std::to_string(b + 1) + " encodes to no tokens");
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
    prompt_tokens += static_cast<int64_t>(ids.size());
    prompt_ids[b] = ids;
    auto t =
        torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).unsqueeze(0);
    first_logits.push_back(session.prefill(t));
    states.push_back(session.state());
    seen[b].index_fill_(0, t[0].to(device), true);
  }
  torch::Tensor logits = torch::cat(first_logits, /*dim=*/0);  // (B, V)
  if (B > 1) {
    samout::model::ModelState stacked;
    for (size_t l = 0; l < states[0].size(); ++l) {
      std::vector<torch::Tensor> rows;
      for (const auto& s : states) rows.push_back(s[l]);
      stacked.push_back(torch::cat(rows, /*dim=*/0));
    }
    session.set_state(std::move(stacked));
  }
  const double prefill_s = seconds_since(t0);

  // Generation: one step per token for the whole batch; a finished row keeps stepping (its tokens
  // are dropped) so the batch keeps its shape.
  samout::model::Sampler sampler(sc, FLAGS_seed);
  auto decode = [&](const std::vector<int>& ids) { return tok->decode(ids); };
  std::vector<samout::model::TextStreamer> streams;
  for (int64_t b = 0; b < B; ++b) streams.emplace_back(decode, prompt_ids[b].back());
  std::vector<std::string> completions(B);
  std::vector<bool> done(B, false);
  const bool stream_out = format == "text";
  int64_t generated = 0, steps = 0;
  const auto t1 = std::chrono::steady_clock::now();
  for (int64_t n = 0; n < FLAGS_max_tokens; ++n) {
    auto next = sampler.sample(logits, seen);  // (B,)
    const auto host = next.to(torch::kCPU);
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      const int id = static_cast<int>(host[b].item<int64_t>());
      if (FLAGS_stop_at_eos && id == eos) {
        done[b] = true;
        continue;
      }
      ++generated;
      out_ids[b].push_back(id);
      const std::string piece = streams[b].push(id);
      completions[b] += piece;
      if (stream_out && !piece.empty()) std::cout << piece << std::flush;
      all_done = false;
    }
    if (all_done || n + 1 == FLAGS_max_tokens) break;  // the last token needs no step after it
    if (sc.repetition_penalty != 1.0) seen.scatter_(1, next.unsqueeze(1), true);
    logits = session.step(next);
    ++steps;
  }
  for (int64_t b = 0; b < B; ++b) {
    const std::string rest = streams[b].finish();
    completions[b] += rest;
    if (stream_out) std::cout << rest << "\n" << std::flush;
  }
  if (!stream_out) {
    for (int64_t b = 0; b < B; ++b)
      std::cout << nlohmann::json{{"prompt", prompts[b]},
                                  {"completion", completions[b]},
                                  {"prompt_ids", prompt_ids[b]},
                                  {"ids", out_ids[b]}}
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
  }
  const double gen_s = seconds_since(t1);
  if (FLAGS_stats) {
    std::cerr << "prefill: " << prompt_tokens << " tokens in " << prefill_s * 1e3
              << " ms; generated " << generated << " tokens (" << steps << " steps of batch " << B
              << ") in " << gen_s << " s: " << (gen_s > 0 ? generated / gen_s : 0.0)
              << " tokens/s, " << (steps > 0 ? gen_s / steps * 1e3 : 0.0) << " ms/step"
              << (session.graph_captured() ? " (CUDA graph)" : "") << "\n";
  }
  return samout::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  samout::data::init_hdf5_for_main();  // before any HDF5 call: no stack printing, no exit handler
  gflags::SetUsageMessage("generate text from a SamOut checkpoint");
  samout::parse_flags_or_exit("samout_generate", &argc, &argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  return samout::run_program("samout_generate", run);
}
