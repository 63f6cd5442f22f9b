#include "samout/ckpt/state.h"

#include <glog/logging.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "samout/ckpt/checkpoint.h"
#include "samout/common/error.h"

namespace samout::ckpt {

using nlohmann::json;

namespace {

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes.size());
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// False when `hex` is not an even-length hex string.
bool from_hex(const std::string& hex, std::string* bytes) {
  if (hex.size() % 2 != 0) return false;
  auto nibble = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  bytes->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes->push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

json run_to_json(const RunShape& r) {
  return {{"vocab_size", r.vocab_size},
          {"hidden", r.hidden},
          {"layers", r.layers},
          {"heads", r.heads},
          {"seq_len", r.seq_len},
          {"batch_size", r.batch_size},
          {"seed", r.seed},
          {"data", r.data},
          {"optimizer", r.optimizer},
          {"zero", r.zero},
          {"pad_id", r.pad_id}};
}

}  // namespace

std::string RunShape::mismatch(const RunShape& o) const {
  const json mine = run_to_json(*this), theirs = run_to_json(o);
  for (const char* k : {"vocab_size", "hidden", "layers", "heads", "seq_len", "batch_size", "seed",
                        "data", "optimizer"})
    if (mine[k] != theirs[k])
      return std::string(k) + "=" + mine[k].dump() + ", this run has " + k + "=" + theirs[k].dump();
  return "";
}

model::ModelConfig RunShape::model_config() const {
  model::ModelConfig c;
  c.vocab_size = vocab_size;
  c.hidden = hidden;
  c.layers = layers;
  c.heads = heads;
  c.pad_id = pad_id;
  return c;
}

json CheckpointState::to_json() const {
  return {{"format", "samout-checkpoint"},
          {"version", 1},
          {"step", step},
          {"cursor", {{"epoch", cursor.epoch}, {"step", cursor.step}}},
          {"world", world},
          {"run", run_to_json(run)},
          {"rng_cpu", to_hex(rng_cpu)}};
}

CheckpointState CheckpointState::from_json(const json& j, const std::string& where) {
  CheckpointState s;
  try {
    s.step = j.at("step").get<int64_t>();
    require(s.step >= 0, where + ": step " + std::to_string(s.step) + " is negative");
    s.cursor.epoch = j.at("cursor").at("epoch").get<int64_t>();
    s.cursor.step = j.at("cursor").at("step").get<int64_t>();
    require(s.cursor.epoch >= 0 && s.cursor.step >= 0, where + ": negative data cursor");
    s.world = j.value("world", 0);
    require(from_hex(j.value("rng_cpu", std::string()), &s.rng_cpu),
            where + ": rng_cpu is not a hex string");
    const auto& r = j.at("run");
    s.run.vocab_size = r.at("vocab_size").get<int64_t>();
    s.run.hidden = r.at("hidden").get<int64_t>();
    s.run.layers = r.at("layers").get<int64_t>();
    s.run.heads = r.at("heads").get<int64_t>();
    s.run.seq_len = r.at("seq_len").get<int64_t>();
    s.run.batch_size = r.at("batch_size").get<int64_t>();
    s.run.seed = r.at("seed").get<uint64_t>();
    s.run.data = r.at("data").get<std::string>();
    s.run.optimizer = r.at("optimizer").get<std::string>();
    s.run.zero = r.value("zero", 0);
    s.run.pad_id = r.value("pad_id", int64_t{-1});
  } catch (const json::exception& e) {
    throw UsageError(where + ": malformed (" + std::string(e.what()) + ")");
  }
  return s;
}

CheckpointState read_state(const std::string& step_dir) {
  const std::string path = step_dir + "/state.json";
  std::ifstream in(path);
  require(in.good(), path + ": cannot read");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw UsageError(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  return CheckpointState::from_json(j, path);
}

std::string resolve_checkpoint(const std::string& path, const std::string& flag, bool none_ok) {
  namespace fs = std::filesystem;
  const std::string what = flag + "=" + path;
  require(fs::is_directory(path), what + ": no such checkpoint folder");
  auto p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "…/step_00000100/"
  const std::string name = p.filename().string();
  if (fs::exists(path + "/manifest.json") || name.rfind("step_", 0) == 0) {  // one checkpoint
    const std::string why = verify(path);
    require(why.empty(), what + ": " + why);
    return path;
  }
  std::vector<std::string> skipped;
  const std::string newest = find_latest_valid(path, &skipped);
  for (const auto& s : skipped) LOG(WARNING) << "skipping checkpoint " << s;
  if (newest.empty()) {
    if (skipped.empty() && none_ok) return "";
    std::string all;
    for (const auto& s : skipped) all += (all.empty() ? "" : "; ") + s;
    throw UsageError(what + ": no valid checkpoint in it" +
                     (skipped.empty() ? std::string(" (no step_ folders)")
                                      : ": none verifies (" + all + "); repair or move them"));
  }
  return newest;
}

}  // namespace samout::ckpt
