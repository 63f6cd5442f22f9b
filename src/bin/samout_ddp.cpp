// samout_ddp: data-parallel SamOut training.
//   mpirun -np 8 build/bin/samout_ddp --flagfile=configs/big.flags
//   build/bin/samout_ddp --flagfile=configs/smoke.flags          (a world of one)
// Exit codes: 0 done, 2 bad flags/files/data (nothing was done), 1 runtime failure.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include "samout/common/error.h"
#include "samout/dist/context.h"
#include "samout/train/flags.h"
#include "samout/train/trainer.h"

int main(int argc, char** argv) {
  gflags::SetUsageMessage("data-parallel SamOut training; see README.md");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);

  auto ctx = samout::dist::init_distributed(&argc, &argv);
  if (!ctx.is_root()) FLAGS_minloglevel = google::GLOG_WARNING;  // rank 0 speaks for the job
  const int rc = samout::run_program(
      "samout_ddp",
      [&] {
        auto cfg = samout::train::config_from_flags();
        samout::dist::select_device(ctx, cfg.device, cfg.comm);
        return samout::train::run_training(cfg, ctx);
      },
      /*report_usage=*/ctx.is_root());
  samout::dist::finalize_distributed();
  return rc;
}
