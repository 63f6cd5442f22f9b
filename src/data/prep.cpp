// The prep pipeline: sample, train tokenizer, encode in parallel, write shards (see prep.h).
#include "samout/data/prep.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include "samout/common/error.h"
#include "samout/data/files.h"
#include "samout/data/h5.h"
#include "samout/data/permutation.h"
#include "samout/data/progress.h"
#include "samout/data/shard_set.h"

namespace samout::data {

namespace fs = std::filesystem;

namespace {
constexpr size_t kChunkBytes = size_t{256} << 10;  // text handed to one encoding task

// A uniform double in [0, 1) from a key: decides splits and samples, reproducibly.
double unit(uint64_t seed, uint64_t salt, int64_t doc) {
  return static_cast<double>(mix64(seed ^ mix64(salt + mix64(static_cast<uint64_t>(doc)))) >> 11) *
         0x1.0p-53;
}
bool is_val(const PrepConfig& cfg, int64_t doc) {
  return unit(cfg.seed, 1, doc) < cfg.val_fraction;
}

void validate(const PrepConfig& cfg) {
  require(!cfg.inputs.empty(), "no --input given");
  require(!cfg.output.empty(), "no --output directory given");
  require(!fs::exists(cfg.output) || fs::is_directory(cfg.output),
          cfg.output + ": exists and is not a directory");
  require(cfg.shard_tokens > 0, "--shard_tokens must be positive");
  require(cfg.val_fraction >= 0 && cfg.val_fraction < 1, "--val_fraction must be in [0, 1)");
  require(cfg.write.compression >= 0 && cfg.write.compression <= 9, "--compression must be 0-9");
  require(cfg.write.chunk_tokens > 0 && cfg.write.chunk_tokens <= (int64_t{1} << 28),
          "--chunk_tokens must be in [1, 2^28]");
  require(cfg.tokenizer.empty() ? cfg.train.vocab_size > 0 : true, "--vocab_size must be positive");
}

// Calls fn(doc_index, doc, bytes) over every document of every file, in order; bytes is how far
// into the concatenated inputs the reader has got (for progress). With `warn`, a file holding
// invalid UTF-8 gets a warning line on stderr with the number of bytes replaced.
template <typename Fn>
void for_each_input_doc(const std::vector<std::string>& files, const PrepConfig& cfg, bool warn,
                        Fn&& fn) {
  int64_t base = 0, doc = 0;
  for (const auto& path : files) {
    const int64_t replaced = for_each_document(
        path, cfg.text,
        [&](std::string&& text, int64_t bytes) { fn(doc++, std::move(text), base + bytes); });
    if (warn && replaced > 0) {
      std::fflush(stdout);  // a progress line first, then the warning
      std::fprintf(stderr,
                   "samout_prep: warning: %s: %ld bytes of invalid UTF-8 replaced by U+FFFD\n",
                   path.c_str(), static_cast<long>(replaced));
    }
    base += static_cast<int64_t>(fs::file_size(path));
  }
}

std::string train_from_inputs(const std::vector<std::string>& files, int64_t total_bytes,
                              const PrepConfig& cfg, int threads) {
  const double rate = std::min(
      1.0, static_cast<double>(cfg.tokenizer_train_bytes) / std::max<int64_t>(1, total_bytes));
  std::vector<std::string> lines;
  Progress progress("read for tokenizer", total_bytes, cfg.progress);
  for_each_input_doc(files, cfg, /*warn=*/false, [&](int64_t d, std::string&& text, int64_t bytes) {
    progress.update(bytes);
    if (is_val(cfg, d) || unit(cfg.seed, 2, d) >= rate) return;
    size_t start = 0;
    while (start < text.size()) {  // SentencePiece trains on lines; "\n" is a piece of its own
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      if (end > start) lines.emplace_back(text, start, end - start);
      start = end + 1;
    }
  });
  progress.finish();
  std::printf("training tokenizer: BPE, vocab %ld, on %zu lines\n",
              static_cast<long>(cfg.train.vocab_size), lines.size());
  std::fflush(stdout);
  TokenizerTrainConfig train = cfg.train;
  train.threads = threads;
  return train_tokenizer(lines, train);
}

// ---- The temporary folder ---------------------------------------------------------------------
// Everything is written into "<output>.tmp-<host>-<pid>" and moved into place at the end. The
// folder is removed when the run fails, when it is interrupted (InterruptCleanup), and, should the
// process have been killed outright, by the next run for the same output on the same host.

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  std::string h(buf);
  for (char& c : h)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_') c = '_';
  return h.empty() ? "localhost" : h;
}

fs::path temp_dir_for(const fs::path& out) {
  return out.string() + ".tmp-" + host_name() + "-" + std::to_string(::getpid());
}

// Removes the temporary folders beside `out` that processes of this host left behind when they
// were killed: "<out>.tmp-<host>-<pid>" whose pid no longer exists. (A folder of another host's
// process may be in use: it is left alone.)
void clear_stale_temp_dirs(const fs::path& out) {
  const std::string prefix = out.filename().string() + ".tmp-" + host_name() + "-";
  std::error_code ec;
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n.size() <= prefix.size() || n.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid = n.substr(prefix.size());
    if (pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t p = static_cast<pid_t>(std::stol(pid));
    if (p <= 0 || p == ::getpid() || ::kill(p, 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    fs::remove_all(it->path(), rm);
    if (!rm) std::printf("removed %s, left by process %d, which has died\n", it->path().c_str(), p);
  }
}

// Removes the temporary folder when SIGINT, SIGTERM or SIGHUP arrives, then dies of that signal
// (the status a shell expects). While it lives, those signals are blocked in the constructing
// thread and in every thread started after it (threads inherit the mask), and a watcher thread
// takes them with sigtimedwait: a handler could not remove a folder safely. commit() holds
// lock() so that a signal never leaves an output half-replaced.
class InterruptCleanup {
 public:
  InterruptCleanup() {
    sigemptyset(&set_);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set_, sig);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
    watcher_ = std::thread([this] { watch(); });
  }
  ~InterruptCleanup() {
    stop_ = true;
    watcher_.join();
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);  // a signal that came meanwhile acts now
  }
  InterruptCleanup(const InterruptCleanup&) = delete;
  InterruptCleanup& operator=(const InterruptCleanup&) = delete;

  void set_dir(const fs::path& dir) {
    std::lock_guard<std::mutex> lock(mu_);
    dir_ = dir;
  }
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mu_); }
  // Called where an error would be reported: an error caused by the watcher removing the folder
  // under the writer is not one. Waits for the signal to end the process.
  void wait_if_interrupted() const {
    while (interrupted_) std::this_thread::sleep_for(std::chrono::seconds(1));
  }

 private:
  void watch() {
    const timespec tick{0, 100 * 1000 * 1000};
    while (!stop_) {
      const int sig = sigtimedwait(&set_, nullptr, &tick);
      if (sig <= 0) continue;
      interrupted_ = true;
      std::lock_guard<std::mutex> lock(mu_);
      // The writer may create a file while the folder is being removed: try again until gone.
      for (int attempt = 0; attempt < 100 && !dir_.empty(); ++attempt) {
        std::error_code ec;
        fs::remove_all(dir_, ec);
        if (!fs::exists(dir_, ec)) break;
      }
      ::signal(sig, SIG_DFL);
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, sig);
      pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
      ::raise(sig);  // this thread has it unblocked and default: the process ends here
    }
  }

  sigset_t set_{}, old_{};
  std::thread watcher_;
  std::mutex mu_;
  fs::path dir_;
  std::atomic<bool> stop_{false}, interrupted_{false};
};

// Moves the finished files from tmp into out, replacing an earlier run's shards.
void commit(const fs::path& tmp, const fs::path& out, const std::vector<std::string>& names) {
  fs::create_directories(out);
  for (const auto& entry : fs::directory_iterator(out)) {
    const std::string n = entry.path().filename().string();
    const bool ours =
        (n.rfind("train-", 0) == 0 || n.rfind("val-", 0) == 0) && entry.path().extension() == ".h5";
    if (ours) fs::remove(entry.path());  // stale shards would join the next run's glob
  }
  for (const auto& n : names) fs::rename(tmp / n, out / n);
  fs::remove_all(tmp);
}
}  // namespace

PrepResult run_prep(const PrepConfig& cfg) {
  validate(cfg);
  InterruptCleanup interrupt;
  const std::vector<std::string> files = expand_globs(cfg.inputs);
  PrepResult result;
  for (const auto& f : files) result.input_bytes += static_cast<int64_t>(fs::file_size(f));
  const int threads =
      cfg.threads > 0 ? cfg.threads : std::max(1u, std::thread::hardware_concurrency());

  std::string model;
  if (cfg.tokenizer.empty()) {
    model = train_from_inputs(files, result.input_bytes, cfg, threads);
  }
  const Tokenizer tok = cfg.tokenizer.empty() ? Tokenizer(model, "trained tokenizer")
                                              : Tokenizer::from_file(cfg.tokenizer);
  const CorpusMeta& meta = tok.meta();
  result.vocab_size = meta.vocab_size;

  fs::path out = fs::path(cfg.output).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  clear_stale_temp_dirs(out);
  const fs::path tmp = temp_dir_for(out);
  fs::remove_all(tmp);
  interrupt.set_dir(tmp);
  try {
    fs::create_directories(tmp);
    ShardSet train(tmp.string(), "train", meta, cfg.write, cfg.shard_tokens);
    ShardSet val(tmp.string(), "val", meta, cfg.write, cfg.shard_tokens);
    const auto t0 = std::chrono::steady_clock::now();

    // Ordered pipeline: chunks are encoded concurrently but written in input order, with at
    // most `threads` chunks in flight so memory stays bounded whatever the corpus size.
    // Progress counts input bytes whose tokens are written, so the rate is the encoding rate.
    struct Chunk {
      int64_t first_doc = 0;
      std::vector<std::string> docs;
      size_t text_bytes = 0;
      int64_t input_end = 0;  // input bytes read up to the chunk's last document
    };
    using Encoded = std::vector<std::vector<uint32_t>>;
    struct InFlight {
      int64_t first_doc, input_end;
      std::future<Encoded> encoded;
    };
    std::deque<InFlight> inflight;
    Progress progress("encode", result.input_bytes, cfg.progress);
    auto write_oldest = [&] {
      InFlight job = std::move(inflight.front());
      inflight.pop_front();
      const Encoded enc = job.encoded.get();
      for (size_t k = 0; k < enc.size(); ++k)
        (is_val(cfg, job.first_doc + static_cast<int64_t>(k)) ? val : train).add_doc(enc[k]);
      progress.update(job.input_end);
    };
    auto submit = [&](Chunk&& chunk) {
      auto docs = std::make_shared<std::vector<std::string>>(std::move(chunk.docs));
      inflight.push_back(
          {chunk.first_doc, chunk.input_end, std::async(std::launch::async, [docs, &tok, &meta] {
             Encoded enc(docs->size());
             std::vector<int> ids;
             for (size_t k = 0; k < docs->size(); ++k) {
               tok.encode((*docs)[k], &ids);
               enc[k].assign(ids.begin(), ids.end());
               enc[k].push_back(static_cast<uint32_t>(meta.eos_id));  // every document ends in eos
             }
             return enc;
           })});
      while (static_cast<int>(inflight.size()) >= threads) write_oldest();
    };
    Chunk chunk;
    for_each_input_doc(files, cfg, /*warn=*/true,
                       [&](int64_t d, std::string&& text, int64_t bytes) {
                         if (chunk.docs.empty()) chunk.first_doc = d;
                         chunk.text_bytes += text.size();
                         chunk.input_end = bytes;
                         chunk.docs.push_back(std::move(text));
                         if (chunk.text_bytes >= kChunkBytes) {
                           submit(std::move(chunk));
                           chunk = Chunk();
                         }
                       });
    if (!chunk.docs.empty()) submit(std::move(chunk));
    while (!inflight.empty()) write_oldest();
    progress.finish();

    result.train_docs = train.num_docs();
    result.train_tokens = train.num_tokens();
    result.val_docs = val.num_docs();
    result.val_tokens = val.num_tokens();
    require(result.train_docs > 0, "all " + std::to_string(result.val_docs) +
                                       " documents went to validation: lower --val_fraction");
    result.files = train.finish();
    for (const auto& n : val.finish()) result.files.push_back(n);
    {
      const fs::path model_path = tmp / "tokenizer.model";
      std::ofstream m(model_path, std::ios::binary);
      m.write(meta.tokenizer_model.data(),
              static_cast<std::streamsize>(meta.tokenizer_model.size()));
      m.close();
      if (!m)
        throw std::runtime_error(model_path.string() + ": cannot write: " + std::strerror(errno));
    }
    result.files.push_back("tokenizer.model");
    result.encode_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto hold = interrupt.lock();
    commit(tmp, out, result.files);
  } catch (...) {
    interrupt.wait_if_interrupted();
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return result;
}

}  // namespace samout::data
