// ckpt/state.h: state.json as a type (round trip, validation, the run-shape comparison) and
// resolve_checkpoint on real checkpoint folders written by CheckpointWriter.
#include "samout/ckpt/state.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "samout/ckpt/checkpoint.h"
#include "samout/common/error.h"

namespace samout::ckpt {
namespace {

namespace fs = std::filesystem;

CheckpointState sample_state() {
  CheckpointState s;
  s.step = 12;
  s.cursor = {3, 4};
  s.world = 2;
  s.run.vocab_size = 300;
  s.run.hidden = 16;
  s.run.layers = 2;
  s.run.heads = 2;
  s.run.seq_len = 8;
  s.run.batch_size = 4;
  s.run.seed = 18446744073709551615ull;  // the largest seed survives JSON
  s.run.data = "random:0";
  s.run.optimizer = "adamw";
  s.run.zero = 1;
  s.run.pad_id = 0;
  s.rng_cpu = std::string("\x00\x01\x7f\x80\xff", 5);
  return s;
}

std::string error_of(const nlohmann::json& j) {
  try {
    CheckpointState::from_json(j, "x/state.json");
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(CheckpointState, RoundTripsThroughJson) {
  const auto s = sample_state();
  const auto j = s.to_json();
  EXPECT_EQ(j["format"], "samout-checkpoint");
  EXPECT_EQ(j["rng_cpu"], "00017f80ff");
  const auto back = CheckpointState::from_json(nlohmann::json::parse(j.dump()), "x");
  EXPECT_EQ(back.step, 12);
  EXPECT_EQ(back.cursor, s.cursor);
  EXPECT_EQ(back.world, 2);
  EXPECT_EQ(back.rng_cpu, s.rng_cpu);
  EXPECT_EQ(back.run.seed, s.run.seed);
  EXPECT_EQ(back.run.data, "random:0");
  EXPECT_EQ(back.run.zero, 1);
  EXPECT_EQ(back.run.pad_id, 0);
  EXPECT_EQ(back.run.mismatch(s.run), "");
  const auto mc = back.run.model_config();
  EXPECT_EQ(mc.vocab_size, 300);
  EXPECT_EQ(mc.hidden, 16);
  EXPECT_EQ(mc.pad_id, 0);
}

TEST(CheckpointState, RefusesWhatCannotBeResumed) {
  auto j = sample_state().to_json();
  j["step"] = -3;
  EXPECT_EQ(error_of(j), "x/state.json: step -3 is negative");
  j = sample_state().to_json();
  j["cursor"]["epoch"] = -1;
  EXPECT_EQ(error_of(j), "x/state.json: negative data cursor");
  j = sample_state().to_json();
  j["rng_cpu"] = "abc";  // odd length
  EXPECT_EQ(error_of(j), "x/state.json: rng_cpu is not a hex string");
  j["rng_cpu"] = "zz";
  EXPECT_EQ(error_of(j), "x/state.json: rng_cpu is not a hex string");
  j = sample_state().to_json();
  j["run"].erase("hidden");
  EXPECT_NE(error_of(j).find("x/state.json: malformed"), std::string::npos) << error_of(j);
  j = sample_state().to_json();
  j["step"] = "twelve";
  EXPECT_NE(error_of(j).find("malformed"), std::string::npos) << error_of(j);
}

TEST(CheckpointState, OlderFilesWithoutZeroOrPadIdReadAsDefaults) {
  auto j = sample_state().to_json();
  j["run"].erase("zero");
  j["run"].erase("pad_id");
  const auto s = CheckpointState::from_json(j, "x");
  EXPECT_EQ(s.run.zero, 0);
  EXPECT_EQ(s.run.pad_id, -1);
}

TEST(RunShape, MismatchNamesTheFirstFieldThatDecidesTheRun) {
  const auto a = sample_state().run;
  auto b = a;
  b.zero = 0;  // ZeRO and padding do not decide the sequence of batches
  b.pad_id = 5;
  EXPECT_EQ(a.mismatch(b), "");
  b.optimizer = "adam";
  EXPECT_EQ(a.mismatch(b), "optimizer=\"adamw\", this run has optimizer=\"adam\"");
  b = a;
  b.seq_len = 9;
  EXPECT_EQ(a.mismatch(b), "seq_len=8, this run has seq_len=9");
  b = a;
  b.data = "random:1";
  EXPECT_EQ(a.mismatch(b), "data=\"random:0\", this run has data=\"random:1\"");
}

// Checkpoints written by the real writer (one rank), so that verify() has real manifests.
class ResolveCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (fs::temp_directory_path() / ("samout_state_test_" + std::to_string(::getpid()))).string();
    fs::create_directories(dir_);
  }
  // Not fs::remove_all: libtorch.so exports a broken copy of it (see ckpt/checkpoint.cpp).
  void TearDown() override { (void)std::system(("rm -rf '" + dir_ + "'").c_str()); }
  void save(int64_t step) {
    CheckpointWriter w(dir_, /*keep=*/5, /*rank=*/0, /*world=*/1);
    Snapshot s;
    s.state = sample_state();
    s.state.step = step;
    s.flat_weights = torch::arange(6, torch::kFloat32);
    s.weights.emplace_back("w", s.flat_weights.view({2, 3}));
    w.save(s, /*async=*/false);
    w.wait();
  }
  std::string error_of(const std::string& path, bool none_ok = false) {
    try {
      resolve_checkpoint(path, "--checkpoint", none_ok);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  }
  std::string dir_;
};

TEST_F(ResolveCheckpoint, NewestValidInAFolderOrTheNamedOne) {
  save(2);
  save(4);
  const std::string s2 = dir_ + "/" + step_dir_name(2), s4 = dir_ + "/" + step_dir_name(4);
  EXPECT_EQ(resolve_checkpoint(dir_, "--checkpoint"), s4);
  EXPECT_EQ(resolve_checkpoint(s2, "--checkpoint"), s2);
  EXPECT_EQ(resolve_checkpoint(s2 + "/", "--checkpoint"), s2 + "/");
  EXPECT_EQ(read_state(s4).step, 4);
  EXPECT_EQ(read_state(s4).world, 1);  // the writer's world, not the snapshot's

  std::ofstream(s4 + "/state.json", std::ios::app) << " ";  // fails its checksum now
  EXPECT_EQ(resolve_checkpoint(dir_, "--checkpoint"), s2);  // skipped, with a warning
  EXPECT_EQ(error_of(s4).rfind("--checkpoint=" + s4 + ": state.json has ", 0), 0u) << error_of(s4);

  std::ofstream(s2 + "/model.h5", std::ios::app) << "x";
  const std::string all_bad = error_of(dir_);
  EXPECT_NE(all_bad.find("no valid checkpoint in it: none verifies"), std::string::npos) << all_bad;
  EXPECT_NE(all_bad.find(step_dir_name(2)), std::string::npos) << all_bad;
  EXPECT_NE(all_bad.find(step_dir_name(4)), std::string::npos) << all_bad;
  EXPECT_EQ(error_of(dir_, /*none_ok=*/true), all_bad);  // corrupt ones are never "none"
}

TEST_F(ResolveCheckpoint, EmptyMissingAndUnfinishedFolders) {
  EXPECT_EQ(resolve_checkpoint(dir_, "--ckpt_dir", /*none_ok=*/true), "");
  EXPECT_EQ(error_of(dir_),
            "--checkpoint=" + dir_ + ": no valid checkpoint in it (no step_ folders)");
  EXPECT_EQ(error_of(dir_ + "/nope"), "--checkpoint=" + dir_ + "/nope: no such checkpoint folder");
  fs::create_directories(dir_ + "/step_00000007");  // a save that never finished
  EXPECT_EQ(error_of(dir_ + "/step_00000007"),
            "--checkpoint=" + dir_ + "/step_00000007: no manifest.json (unfinished)");
}

}  // namespace
}  // namespace samout::ckpt
