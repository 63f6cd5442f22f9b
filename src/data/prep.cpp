// The prep pipeline: sample, train tokenizer, encode in parallel, write shards (see prep.h).
#include "samout/data/prep.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "samout/common/error.h"
#include "samout/common/strings.h"
#include "samout/data/files.h"
#include "samout/data/permutation.h"

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

// Progress of a pass over bytes, on stdout (stderr is kept for the one-line error contract): a
// redrawn bar on a terminal, a line every 10 s in a log. interactive: -1 detects a terminal on
// stdout, 0 forces log lines, 1 forces the bar.
class Progress {
 public:
  Progress(std::string label, int64_t total_bytes, int interactive)
      : label_(std::move(label)),
        total_(std::max<int64_t>(1, total_bytes)),
        tty_(interactive < 0 ? ::isatty(::fileno(stdout)) != 0 : interactive != 0),
        start_(std::chrono::steady_clock::now()),
        last_draw_(start_) {}

  void update(int64_t done_bytes) {  // cheap to call often
    done_ = done_bytes;
    const auto now = std::chrono::steady_clock::now();
    const auto every = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(10000);
    if (now - last_draw_ < every) return;
    last_draw_ = now;
    draw(false);
  }

  void finish() {  // final line with the average rate
    done_ = std::max(done_, total_);
    draw(true);
  }

 private:
  void draw(bool final) {
    const double secs = std::max(1e-9, seconds_since(start_));
    const double frac = std::min(1.0, static_cast<double>(done_) / total_);
    const double rate = done_ / secs;  // bytes/s
    const double eta = rate > 0 ? (total_ - done_) / rate : 0;
    char tail[160];
    if (final)
      std::snprintf(tail, sizeof tail, "%.1f MB in %s, %.1f MB/s", done_ / 1e6,
                    format_duration(secs).c_str(), rate / 1e6);
    else
      std::snprintf(tail, sizeof tail, "%5.1f%% %.1f/%.1f MB %.1f MB/s ETA %s", 100 * frac,
                    done_ / 1e6, total_ / 1e6, rate / 1e6, format_duration(eta).c_str());
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(frac * kWidth);
      const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
      std::printf("\r\x1b[K%s [%s] %s%s", label_.c_str(), bar.c_str(), tail, final ? "\n" : "");
    } else {
      std::printf("%s: %s\n", label_.c_str(), tail);
    }
    std::fflush(stdout);
  }

  std::string label_;
  int64_t total_, done_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// Files <dir>/<prefix>-00000.h5, -00001.h5, ... of at most shard_tokens tokens each: a document
// that would cross the limit is cut and continues as the first document of the next file.
class ShardSet {
 public:
  ShardSet(std::string dir, std::string prefix, const PrepConfig& cfg, const CorpusMeta& meta)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), cfg_(cfg), meta_(meta) {}

  void add_doc(const std::vector<uint32_t>& ids) {
    ++docs_;
    const int64_t n = static_cast<int64_t>(ids.size());
    for (int64_t done = 0; done < n;) {
      if (cur_ && cur_->num_tokens() >= cfg_.shard_tokens) {
        cur_->close();
        cur_.reset();
      }
      if (!cur_) {
        char name[64];
        std::snprintf(name, sizeof name, "%s-%05zu.h5", prefix_.c_str(), names_.size());
        names_.push_back(name);
        cur_ = std::make_unique<ShardWriter>(dir_ + "/" + name, meta_, cfg_.write);
      }
      cur_->begin_doc();  // a continued document starts again at the top of the new file
      const int64_t take = std::min(n - done, cfg_.shard_tokens - cur_->num_tokens());
      cur_->append(ids.data() + done, take);
      done += take;
    }
    tokens_ += n;
  }

  // Closes the last file; returns the file names (without dir), in order.
  std::vector<std::string> finish() {
    if (cur_) cur_->close();
    cur_.reset();
    return names_;
  }
  int64_t num_tokens() const { return tokens_; }
  int64_t num_docs() const { return docs_; }

 private:
  std::string dir_, prefix_;
  const PrepConfig& cfg_;
  const CorpusMeta& meta_;
  std::unique_ptr<ShardWriter> cur_;
  std::vector<std::string> names_;
  int64_t tokens_ = 0, docs_ = 0;
};

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
  require(!cfg.tokenizer.empty() || cfg.train.vocab_size > 0, "--vocab_size must be positive");
}

// Calls fn(doc_index, doc, bytes) over every document of every file, in order, bytes being how far
// into the concatenated inputs the reader is. With `warn`, a file holding invalid UTF-8 gets a
// warning line on stderr.
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
    std::istringstream in(text);  // SentencePiece trains on lines; "\n" is a piece of its own
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) lines.push_back(std::move(line));
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
// folder is removed on failure, on a signal (InterruptCleanup), and, after a kill, by the next run
// for the same output on the same host.

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  std::string h(buf);
  for (char& c : h)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_') c = '_';
  return h.empty() ? "localhost" : h;
}

// Removes "<out>.tmp-<host>-<pid>" folders of this host whose process has died. (Another host's
// process may still be using its folder.)
void clear_stale_temp_dirs(const fs::path& out) {
  const std::string prefix = out.filename().string() + ".tmp-" + host_name() + "-";
  std::error_code ec;
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n.size() <= prefix.size() || n.compare(0, prefix.size(), prefix) != 0) continue;
    pid_t p = 0;
    const char* last = n.data() + n.size();
    if (std::from_chars(n.data() + prefix.size(), last, p).ptr != last) continue;  // not all digits
    if (p <= 0 || p == ::getpid() || ::kill(p, 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    fs::remove_all(it->path(), rm);
    if (!rm) std::printf("removed %s, left by process %d, which has died\n", it->path().c_str(), p);
  }
}

// On SIGINT, SIGTERM or SIGHUP, removes the temporary folder, then dies of that signal (the status
// a shell expects). A handler could not remove a folder safely, so while this lives the signals
// are blocked (threads started later inherit the mask) and a watcher thread takes them with
// sigtimedwait. commit() holds lock() so that a signal never leaves an output half-replaced.
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
  // Called before reporting an error, which may come from the watcher removing the folder under
  // the writer: then waits for the signal to end the process instead.
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
  std::vector<std::string> files;
  for (const auto& pattern : cfg.inputs) {
    const auto matches = expand_glob(pattern);
    files.insert(files.end(), matches.begin(), matches.end());
  }
  PrepResult result;
  for (const auto& f : files) result.input_bytes += static_cast<int64_t>(fs::file_size(f));
  const int threads =
      cfg.threads > 0 ? cfg.threads : std::max(1u, std::thread::hardware_concurrency());

  const Tokenizer tok = cfg.tokenizer.empty()
                            ? Tokenizer(train_from_inputs(files, result.input_bytes, cfg, threads),
                                        "trained tokenizer")
                            : Tokenizer::from_file(cfg.tokenizer);
  const CorpusMeta& meta = tok.meta();
  result.vocab_size = meta.vocab_size;

  fs::path out = fs::path(cfg.output).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  clear_stale_temp_dirs(out);
  const fs::path tmp = out.string() + ".tmp-" + host_name() + "-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  interrupt.set_dir(tmp);
  try {
    fs::create_directories(tmp);
    ShardSet train(tmp.string(), "train", cfg, meta);
    ShardSet val(tmp.string(), "val", cfg, meta);
    const auto t0 = std::chrono::steady_clock::now();

    // Chunks of documents are encoded concurrently but written in input order, at most `threads`
    // in flight so memory stays bounded. Progress counts input bytes written: the encoding rate.
    using Encoded = std::vector<std::vector<uint32_t>>;
    struct InFlight {
      int64_t first_doc, input_end;  // input_end: input bytes read up to its last document
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
    std::vector<std::string> chunk;  // the documents from first_doc on, not yet submitted
    size_t chunk_bytes = 0;
    int64_t first_doc = 0, input_end = 0;
    auto submit = [&] {
      auto encode = [docs = std::move(chunk), &tok, &meta] {
        Encoded enc(docs.size());
        std::vector<int> ids;
        for (size_t k = 0; k < docs.size(); ++k) {
          tok.encode(docs[k], &ids);
          enc[k].assign(ids.begin(), ids.end());
          enc[k].push_back(static_cast<uint32_t>(meta.eos_id));  // every document ends in eos
        }
        return enc;
      };
      inflight.push_back({first_doc, input_end, std::async(std::launch::async, std::move(encode))});
      chunk.clear();
      chunk_bytes = 0;
      while (static_cast<int>(inflight.size()) >= threads) write_oldest();
    };
    for_each_input_doc(files, cfg, /*warn=*/true,
                       [&](int64_t d, std::string&& text, int64_t bytes) {
                         if (chunk.empty()) first_doc = d;
                         chunk_bytes += text.size();
                         input_end = bytes;
                         chunk.push_back(std::move(text));
                         if (chunk_bytes >= kChunkBytes) submit();
                       });
    if (!chunk.empty()) submit();
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
    const fs::path model_path = tmp / "tokenizer.model";
    std::ofstream model(model_path, std::ios::binary);
    model << meta.tokenizer_model;
    model.close();
    if (!model)
      throw std::runtime_error(model_path.string() + ": cannot write: " + std::strerror(errno));
    result.files.push_back("tokenizer.model");
    result.encode_seconds = seconds_since(t0);
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
