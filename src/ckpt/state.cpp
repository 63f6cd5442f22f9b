#include "samout/ckpt/state.h"

#include <glog/logging.h>

#include <charconv>
#include <filesystem>
#include <fstream>

#include "samout/ckpt/checkpoint.h"
#include "samout/common/error.h"

namespace samout::ckpt {

using nlohmann::json;

namespace {

std::string to_hex(const std::string& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {kDigits[c >> 4], kDigits[c & 15]};
  return out;
}

// False when `hex` is not an even-length hex string.
bool from_hex(const std::string& hex, std::string* bytes) {
  if (hex.size() % 2 != 0) return false;
  bytes->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    unsigned byte = 0;
    const char* end = hex.data() + i + 2;
    if (std::from_chars(hex.data() + i, end, byte, 16).ptr != end) return false;
    bytes->push_back(static_cast<char>(byte));
  }
  return true;
}

}  // namespace

// Every field is required by from_json (json::at); CheckpointState::from_json supplies the two that
// older files lack.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunShape, vocab_size, hidden, layers, heads, seq_len, batch_size,
                                   seed, data, optimizer, zero, pad_id)

std::string RunShape::mismatch(const RunShape& o) const {
  const json mine = *this, theirs = o;
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
          {"run", run},
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
    json run = j.at("run");
    run.emplace("zero", 0);  // absent from older files (emplace keeps a value that is there)
    run.emplace("pad_id", -1);
    s.run = run.get<RunShape>();
  } catch (const json::exception& e) {
    throw UsageError(where + ": malformed (" + std::string(e.what()) + ")");
  }
  return s;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  require(in.good(), path + ": cannot read");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw UsageError(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
}

CheckpointState read_state(const std::string& step_dir) {
  const std::string path = step_dir + "/state.json";
  return CheckpointState::from_json(read_json(path), path);
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
  std::string skipped;                           // "step_dir: why; ..."
  for (const auto& d : checkpoint_dirs(path)) {  // the newest that verifies
    const std::string step_dir = path + "/" + d;
    const std::string why = verify(step_dir);
    if (why.empty()) return step_dir;
    LOG(WARNING) << "skipping checkpoint " << step_dir << ": " << why;
    skipped += (skipped.empty() ? "" : "; ") + step_dir + ": " + why;
  }
  if (skipped.empty() && none_ok) return "";
  throw UsageError(what + ": no valid checkpoint in it" +
                   (skipped.empty() ? std::string(" (no step_ folders)")
                                    : ": none verifies (" + skipped + "); repair or move them"));
}

}  // namespace samout::ckpt
