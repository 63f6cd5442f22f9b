#include "samout/ckpt/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <glog/logging.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "samout/ckpt/checksum.h"
#include "samout/ckpt/durable_file.h"
#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/data/h5.h"

namespace samout::ckpt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr char kOptMagic[8] = {'S', 'A', 'M', 'O', 'P', 'T', '0', '1'};
constexpr double kRankWaitS = 600;  // how long rank 0 waits for the other ranks' files

// The optimizer file header: 64 bytes, then exp_avg[end-begin] and exp_avg_sq[end-begin] as fp32.
struct OptHeader {
  char magic[8];
  int64_t total, begin, end, steps;
  char pad[24];
};
static_assert(sizeof(OptHeader) == 64);

void write_optimizer(const std::string& path, const Snapshot& s) {
  OptHeader h{};
  std::memcpy(h.magic, kOptMagic, sizeof(kOptMagic));
  h.total = s.opt_total;
  h.begin = s.opt_begin;
  h.end = s.opt_end;
  h.steps = s.opt_steps;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot create " + path);
  const size_t n = static_cast<size_t>(s.opt_end - s.opt_begin);
  bool ok = std::fwrite(&h, sizeof(h), 1, f) == 1;
  ok = ok && std::fwrite(s.exp_avg.data_ptr<float>(), sizeof(float), n, f) == n;
  ok = ok && std::fwrite(s.exp_avg_sq.data_ptr<float>(), sizeof(float), n, f) == n;
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  std::fclose(f);
  if (!ok) throw std::runtime_error("cannot write " + path);
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

std::string rank_file(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank-%05d.json", rank);
  return buf;
}

std::vector<std::string> checkpoint_dirs(const std::string& dir) {  // newest first
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step_", 0) == 0) out.push_back(name);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError(path + ": cannot read");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw UsageError(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
}

}  // namespace

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return buf;
}

// ---- Writing ----------------------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::string dir, int keep, int rank, int world)
    : dir_(std::move(dir)), keep_(keep), rank_(rank), world_(world) {}

CheckpointWriter::~CheckpointWriter() {
  if (thread_.joinable()) thread_.join();
}

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
  if (thread_.joinable()) thread_.join();
  if (!error_.empty()) {
    const std::string e = error_;
    error_.clear();
    throw std::runtime_error("checkpoint save failed: " + e);
  }
}

void CheckpointWriter::save(Snapshot s, bool async) {
  wait();
  if (!async) {
    write(s);
    return;
  }
  thread_ = std::thread([this, snap = std::move(s)] {
    data::quiet_hdf5_errors();  // HDF5's error printing is per thread
    try {
      write(snap);
    } catch (const std::exception& e) {
      error_ = e.what();
    }
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
    write_file_atomic(tmp + "/state.json", state.to_json().dump(2));
    files.push_back("state.json");
    if (!s.tokenizer.empty()) {
      write_file_atomic(tmp + "/tokenizer.model", s.tokenizer);
      files.push_back("tokenizer.model");
    }
  }
  if (s.exp_avg.defined()) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "optim-%05d.bin", rank_);
    write_optimizer(tmp + "/" + buf, s);
    files.push_back(buf);
  }
  if (s.debug_kill_midway) ::raise(SIGKILL);  // test only: a rank dies in the middle of a save
  json mine = json::object();
  for (const auto& f : files) {
    const FileDigest d = digest_file(tmp + "/" + f);
    mine[f] = {{"size", d.size}, {"xxh64", d.xxh64}};
  }
  write_file_atomic(tmp + "/" + rank_file(rank_), mine.dump(2));
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
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (waited > kRankWaitS)
        throw std::runtime_error("rank " + std::to_string(r) + " did not finish its part of " +
                                 name);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const json listed = read_json(path);  // named: items() must not outlive a temporary
    for (auto& [f, e] : listed.items()) manifest["files"][f] = e;
    const FileDigest d = digest_file(path);
    manifest["files"][rank_file(r)] = {{"size", d.size}, {"xxh64", d.xxh64}};
  }
  if (!finite) {
    remove_tree(tmp);
    LOG(ERROR) << "checkpoint " << name << " not saved: the weights hold non-finite values";
    return;
  }
  write_file_atomic(tmp + "/manifest.json", manifest.dump(2));
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
  LOG(INFO) << "checkpoint " << final_dir << " written in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s";
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
    const FileDigest d = digest_file(step_dir + "/" + f);
    if (d.size < 0) return f + " is missing";
    if (d.size != e.value("size", int64_t{-2}))
      return f + " has " + std::to_string(d.size) + " bytes, manifest says " +
             std::to_string(e.value("size", int64_t{-2}));
    if (d.xxh64 != e.value("xxh64", std::string())) return f + " fails its checksum";
  }
  return "";
}

std::string find_latest_valid(const std::string& dir, std::vector<std::string>* skipped) {
  for (const auto& d : checkpoint_dirs(dir)) {
    const std::string path = dir + "/" + d;
    const std::string why = verify(path);
    if (why.empty()) return path;
    if (skipped) skipped->push_back(path + ": " + why);
  }
  return "";
}

int64_t read_optimizer_range(const std::string& step_dir, int64_t total, int64_t begin, int64_t end,
                             torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq) {
  int64_t covered = 0, steps = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(step_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("optim-", 0) != 0) continue;
    std::FILE* f = std::fopen(e.path().c_str(), "rb");
    require(f != nullptr, e.path().string() + ": cannot read");
    OptHeader h{};
    const bool ok = std::fread(&h, sizeof(h), 1, f) == 1 &&
                    std::memcmp(h.magic, kOptMagic, sizeof(kOptMagic)) == 0;
    if (!ok || h.total != total) {
      std::fclose(f);
      throw UsageError(e.path().string() + ": not an optimizer shard of a " +
                       std::to_string(total) + "-parameter model");
    }
    if (h.begin < 0 || h.begin > h.end || h.end > total || h.steps < 0) {
      std::fclose(f);
      throw UsageError(e.path().string() + ": inconsistent header (range [" +
                       std::to_string(h.begin) + ", " + std::to_string(h.end) + ") of " +
                       std::to_string(total) + ", step " + std::to_string(h.steps) + ")");
    }
    steps = h.steps;
    const int64_t lo = std::max(begin, h.begin), hi = std::min(end, h.end);
    const int64_t n = h.end - h.begin;
    bool read_ok = true;
    if (lo < hi) {
      for (int which = 0; which < 2; ++which) {
        torch::Tensor& dst = which == 0 ? exp_avg : exp_avg_sq;
        const off_t off =
            static_cast<off_t>(sizeof(h) + (which * n + (lo - h.begin)) * sizeof(float));
        read_ok = read_ok && ::fseeko(f, off, SEEK_SET) == 0 &&
                  std::fread(dst.data_ptr<float>() + (lo - begin), sizeof(float), hi - lo, f) ==
                      static_cast<size_t>(hi - lo);
      }
      covered += hi - lo;
    }
    std::fclose(f);
    require(read_ok, e.path().string() + ": truncated");
  }
  require(covered == end - begin, step_dir + ": optimizer files cover " + std::to_string(covered) +
                                      " of the " + std::to_string(end - begin) + " values needed");
  return steps;
}

}  // namespace samout::ckpt
