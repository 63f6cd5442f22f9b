// samout_ddp: data-parallel SamOut training.
//   mpirun -np 8 build/bin/samout_ddp --flagfile=configs/big.flags
//   build/bin/samout_ddp --flagfile=configs/smoke.flags          (a world of one)
// Exit codes: 0 done, 2 bad flags/files/data (nothing was done), 1 runtime failure.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include <optional>

#include "samout/common/error.h"
#include "samout/common/flags_check.h"
#include "samout/data/h5.h"
#include "samout/dist/context.h"
#include "samout/train/flags.h"
#include "samout/train/trainer.h"

int main(int argc, char** argv) {
  samout::data::init_hdf5_for_main();  // before any HDF5 call: no stack printing, no exit handler
  gflags::SetUsageMessage("data-parallel SamOut training; see README.md");
  // MPI first: each rank may have been given its own command line (mpirun's a : b), so every check
  // of the flags is agreed across ranks; a rank that gave up alone would leave the others hanging.
  auto ctx = samout::dist::init_distributed(&argc, &argv);
  int rc = samout::kExitUsage;
  const std::string parse_error = samout::parse_flags(&argc, &argv);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  if (!ctx.is_root()) FLAGS_minloglevel = google::GLOG_WARNING;  // rank 0 speaks for the job
  using samout::train::agree_no_error;
  if (agree_no_error(ctx, parse_error, "samout_ddp") &&
      agree_no_error(ctx, samout::train::compare_with_root(), "samout_ddp")) {
    // The ranks' flags agree, but a device may be missing on one node: agreed too.
    std::optional<samout::train::TrainConfig> cfg;
    std::string config_error;
    try {
      cfg = samout::train::config_from_flags();
      samout::dist::select_device(ctx, cfg->device, cfg->comm);
    } catch (const std::exception& e) {
      config_error = samout::first_line(e.what());
    }
    if (agree_no_error(ctx, config_error, "samout_ddp")) {
      rc = samout::run_program(
          "samout_ddp", [&] { return samout::train::run_training(*cfg, ctx); },
          /*report_usage=*/ctx.is_root());
    }
  }
  samout::dist::finalize_distributed();
  return rc;
}
