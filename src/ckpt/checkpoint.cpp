#include "samout/ckpt/checkpoint.h"

#include <ftw.h>
#include <glog/logging.h>
#include <signal.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>
#include <thread>

#include "samout/ckpt/durable_file.h"
#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/strings.h"
#include "samout/data/h5.h"

namespace samout::ckpt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr char kOptMagic[] = "SAMOPT01";  // its 8 letters, without the NUL, begin the file
constexpr double kRankWaitS = 600;        // how long rank 0 waits for the other ranks' files

// The optimizer file header: 64 bytes, then exp_avg[end-begin] and exp_avg_sq[end-begin] as fp32.
struct OptHeader {
  char magic[8];
  int64_t total, begin, end, steps;
  char pad[24];
};
static_assert(sizeof(OptHeader) == 64);

std::string_view bytes_of(const torch::Tensor& t) {
  return {static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.nbytes())};
}

// Recursive delete with nftw. Not std::filesystem::remove_all: libtorch.so exports its own copy of
// that symbol, which the dynamic linker binds here, and it crashes (a null call) outside torch.
void remove_tree(const std::string& path) {
  ::nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) {
        ::remove(p);  // best effort: what cannot be removed stays, and is named by the next start
        return 0;
      },
      16, FTW_DEPTH | FTW_PHYS);
}

// "<prefix><n, zero-padded to `width` digits><suffix>"
std::string numbered(const char* prefix, int64_t n, int width, const char* suffix = "") {
  const std::string digits = std::to_string(n);
  return prefix + std::string(std::max(0, width - static_cast<int>(digits.size())), '0') + digits +
         suffix;
}

std::string rank_file(int rank) { return numbered("rank-", rank, 5, ".json"); }

// A file's manifest entry: {"size": bytes, "xxh64": 16 hex digits}; size -1 when it cannot be read.
// A file whose size or checksum differs from its entry is corrupt (truncated, bit-flipped).
json digest_file(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return {{"size", -1}};
  std::unique_ptr<XXH64_state_t, XXH_errorcode (*)(XXH64_state_t*)> st(XXH64_createState(),
                                                                       &XXH64_freeState);
  XXH64_reset(st.get(), 0);
  std::vector<char> buf(1 << 22);
  int64_t size = 0;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    XXH64_update(st.get(), buf.data(), n);
    size += static_cast<int64_t>(n);
  }
  if (std::ferror(f.get())) return {{"size", -1}};
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(XXH64_digest(st.get())));
  return {{"size", size}, {"xxh64", hex}};
}

}  // namespace

std::string step_dir_name(int64_t step) { return numbered("step_", step, 8); }

std::vector<std::string> checkpoint_dirs(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step_", 0) == 0) out.push_back(name);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

// ---- Writing ----------------------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::string dir, int keep, int rank, int world)
    : dir_(std::move(dir)), keep_(keep), rank_(rank), world_(world) {}

void CheckpointWriter::remove_partial(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0 || name.rfind(".old-", 0) == 0) {
      LOG(WARNING) << "removing the unfinished checkpoint " << e.path().string();
      remove_tree(e.path().string());
    }
  }
}

void CheckpointWriter::wait() {
  if (!in_flight_.valid()) return;
  try {
    in_flight_.get();
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint save failed: " + std::string(e.what()));
  }
}

void CheckpointWriter::save(Snapshot s, bool async) {
  wait();
  if (!async) {
    write(s);
    return;
  }
  in_flight_ = std::async(std::launch::async, [this, snap = std::move(s)] {
    data::quiet_hdf5_errors();  // HDF5's error printing is per thread
    write(snap);
  });
}

void CheckpointWriter::write(const Snapshot& s) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string name = step_dir_name(s.state.step);
  const std::string tmp = dir_ + "/.tmp-" + name;
  fs::create_directories(tmp);

  // Never publish a non-finite weight: the job would resume into the same failure. Checked here,
  // on the host copy in the writer's thread, so that training does not wait for it.
  const bool finite =
      rank_ != 0 || !s.flat_weights.defined() || torch::isfinite(s.flat_weights).all().item<bool>();
  std::vector<std::string> files;
  if (rank_ == 0 && finite) {
    torch::OrderedDict<std::string, torch::Tensor> named;
    for (const auto& [k, v] : s.weights) named.insert(k, v);
    write_weights(tmp + "/model.h5", named);
    files.push_back("model.h5");
    CheckpointState state = s.state;
    state.world = world_;
    write_file_atomic(tmp + "/state.json", {state.to_json().dump(2)});
    files.push_back("state.json");
    if (!s.tokenizer.empty()) {
      write_file_atomic(tmp + "/tokenizer.model", {s.tokenizer});
      files.push_back("tokenizer.model");
    }
  }
  if (s.exp_avg.defined()) {
    OptHeader h{{}, s.opt_total, s.opt_begin, s.opt_end, s.opt_steps, {}};
    std::memcpy(h.magic, kOptMagic, sizeof(h.magic));
    const std::string f = numbered("optim-", rank_, 5, ".bin");
    write_file_atomic(tmp + "/" + f,
                      {std::string_view(reinterpret_cast<const char*>(&h), sizeof(h)),
                       bytes_of(s.exp_avg), bytes_of(s.exp_avg_sq)});
    files.push_back(f);
  }
  if (s.debug_kill_midway) ::raise(SIGKILL);  // test only: a rank dies in the middle of a save
  json mine = json::object();
  for (const auto& f : files) mine[f] = digest_file(tmp + "/" + f);
  write_file_atomic(tmp + "/" + rank_file(rank_), {mine.dump(2)});
  if (rank_ != 0) return;

  // Rank 0: wait for every rank's list, then the manifest, then the rename that publishes it.
  json manifest = {{"format", "samout-checkpoint"},
                   {"version", 1},
                   {"step", s.state.step},
                   {"world", world_},
                   {"files", json::object()}};
  for (int r = 0; r < world_; ++r) {
    const std::string path = tmp + "/" + rank_file(r);
    while (!fs::exists(path)) {
      if (seconds_since(t0) > kRankWaitS)
        throw std::runtime_error("rank " + std::to_string(r) + " did not finish its part of " +
                                 name);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const json listed = read_json(path);  // named: items() must not outlive a temporary
    for (auto& [f, e] : listed.items()) manifest["files"][f] = e;
    manifest["files"][rank_file(r)] = digest_file(path);
  }
  if (!finite) {
    remove_tree(tmp);
    LOG(ERROR) << "checkpoint " << name << " not saved: the weights hold non-finite values";
    return;
  }
  write_file_atomic(tmp + "/manifest.json", {manifest.dump(2)});
  fsync_path(tmp);
  const std::string final_dir = dir_ + "/" + name;
  if (fs::exists(final_dir)) {  // a rerun of the same step replaces the older copy
    const std::string old = dir_ + "/.old-" + name;
    remove_tree(old);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    remove_tree(old);
  } else {
    fs::rename(tmp, final_dir);
  }
  fsync_path(dir_);

  // Retention: the newest keep_ checkpoints that verify stay. One that does not verify is never
  // counted (it must not push out a good one) and never deleted: the user may want to look at it.
  if (keep_ > 0) {
    int kept = 0;
    for (const auto& d : checkpoint_dirs(dir_)) {
      const std::string path = dir_ + "/" + d;
      const std::string why = d == name ? std::string() : verify(path);
      if (!why.empty()) {
        LOG(WARNING) << "retention: leaving " << path << " alone, it does not verify (" << why
                     << "); it does not count towards --keep_ckpts";
        continue;
      }
      if (++kept > keep_) remove_tree(path);
    }
  }
  LOG(INFO) << "checkpoint " << final_dir << " written in " << seconds_since(t0) << " s";
}

// ---- Reading ----------------------------------------------------------------------------------------

std::string verify(const std::string& step_dir) {
  const std::string mpath = step_dir + "/manifest.json";
  if (!fs::exists(mpath)) return "no manifest.json (unfinished)";
  json manifest;
  try {
    manifest = read_json(mpath);
  } catch (const UsageError& e) {
    return e.what();
  }
  if (!manifest.contains("files") || manifest["files"].empty())
    return "manifest.json lists no files";
  for (auto& [f, e] : manifest["files"].items()) {
    const json d = digest_file(step_dir + "/" + f);
    const int64_t size = d["size"];
    if (size < 0) return f + " is missing";
    const int64_t listed = e.value("size", int64_t{-2});
    if (size != listed)
      return f + " has " + std::to_string(size) + " bytes, manifest says " + std::to_string(listed);
    if (d["xxh64"] != e.value("xxh64", std::string())) return f + " fails its checksum";
  }
  return "";
}

int64_t read_optimizer_range(const std::string& step_dir, int64_t total, int64_t begin, int64_t end,
                             torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq) {
  int64_t covered = 0, steps = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(step_dir, ec)) {
    if (e.path().filename().string().rfind("optim-", 0) != 0) continue;
    const std::string path = e.path().string();
    std::ifstream f(path, std::ios::binary);
    require(f.good(), path + ": cannot read");
    OptHeader h{};
    f.read(reinterpret_cast<char*>(&h), sizeof(h));
    require(f && std::memcmp(h.magic, kOptMagic, sizeof(h.magic)) == 0 && h.total == total,
            path + ": not an optimizer shard of a " + std::to_string(total) + "-parameter model");
    require(h.begin >= 0 && h.begin <= h.end && h.end <= total && h.steps >= 0,
            path + ": inconsistent header (range [" + std::to_string(h.begin) + ", " +
                std::to_string(h.end) + ") of " + std::to_string(total) + ", step " +
                std::to_string(h.steps) + ")");
    steps = h.steps;
    const int64_t lo = std::max(begin, h.begin), hi = std::min(end, h.end);
    if (lo < hi) {
      for (int which = 0; which < 2; ++which) {
        torch::Tensor& dst = which == 0 ? exp_avg : exp_avg_sq;
        f.seekg(sizeof(h) + (which * (h.end - h.begin) + (lo - h.begin)) * sizeof(float));
        f.read(reinterpret_cast<char*>(dst.data_ptr<float>() + (lo - begin)),
               (hi - lo) * sizeof(float));
      }
      covered += hi - lo;
    }
    require(!f.fail(), path + ": truncated");
  }
  require(covered == end - begin, step_dir + ": optimizer files cover " + std::to_string(covered) +
                                      " of the " + std::to_string(end - begin) + " values needed");
  return steps;
}

}  // namespace samout::ckpt
