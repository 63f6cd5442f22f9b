// Size-bounded sequence of corpus files (see shard_set.h).
#include "samout/data/shard_set.h"

#include <algorithm>
#include <cstdio>

#include "samout/common/error.h"

namespace samout::data {

ShardSet::ShardSet(std::string dir, std::string prefix, CorpusMeta meta, WriteOptions opt,
                   int64_t shard_tokens)
    : dir_(std::move(dir)),
      prefix_(std::move(prefix)),
      meta_(std::move(meta)),
      opt_(opt),
      shard_tokens_(shard_tokens) {
  require(shard_tokens_ > 0, "shard_tokens must be positive, got " + std::to_string(shard_tokens_));
}

void ShardSet::add_doc(const std::vector<uint32_t>& ids) {
  ++docs_;
  int64_t done = 0;
  const int64_t n = static_cast<int64_t>(ids.size());
  while (done < n) {
    if (cur_ && cur_->num_tokens() >= shard_tokens_) {
      cur_->close();
      cur_.reset();
    }
    if (!cur_) {
      char name[64];
      std::snprintf(name, sizeof name, "%s-%05zu.h5", prefix_.c_str(), names_.size());
      names_.push_back(name);
      cur_ = std::make_unique<ShardWriter>(dir_ + "/" + name, meta_, opt_);
    }
    cur_->begin_doc();  // a continued document starts again at the top of the new file
    const int64_t take = std::min(n - done, shard_tokens_ - cur_->num_tokens());
    cur_->append(ids.data() + done, take);
    done += take;
  }
  tokens_ += n;
}

std::vector<std::string> ShardSet::finish() {
  if (cur_) cur_->close();
  cur_.reset();
  return names_;
}

}  // namespace samout::data
