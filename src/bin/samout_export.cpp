// samout_export: a checkpoint's weights as a file for PyTorch.
//   samout_export --checkpoint=runs/ckpt --output=model.pt      (newest valid checkpoint)
//   samout_export --checkpoint=runs/ckpt/step_00001000 --output=model.pt
// In Python:  sd = torch.load("model.pt");  SamOut(...).load_state_dict(sd)
// An output ending in .h5 is written as HDF5 instead (the trainer's --init_from reads both).
#include <gflags/gflags.h>

#include <iostream>

#include "samout/ckpt/state.h"
#include "samout/ckpt/weights_file.h"
#include "samout/common/error.h"
#include "samout/common/file_checks.h"
#include "samout/common/flags_check.h"
#include "samout/data/h5.h"

DEFINE_string(checkpoint, "",
              "a checkpoint folder (step_NNNNNNNN) or a --ckpt_dir (its newest valid one)");
DEFINE_string(output, "", "output file: torch.load format, or HDF5 when it ends in .h5");

int main(int argc, char** argv) {
  samout::data::init_hdf5_for_main();  // before any HDF5 call: no stack printing, no exit handler
  samout::start_program("samout_export", "export a checkpoint's weights for PyTorch", &argc, &argv);
  return samout::run_program("samout_export", [] {
    using samout::require;
    require(!FLAGS_checkpoint.empty(), "--checkpoint is required");
    require(!FLAGS_output.empty(), "--output is required");
    samout::check_output_file("output", FLAGS_output, 0);  // a directory, a missing folder: now
    const std::string dir = samout::ckpt::resolve_checkpoint(FLAGS_checkpoint, "--checkpoint");
    const auto weights = samout::ckpt::read_weights(dir + "/model.h5");
    torch::OrderedDict<std::string, torch::Tensor> named;
    for (const auto& [k, v] : weights) named.insert(k, v);
    const std::string& out = FLAGS_output;
    int64_t bytes = 1 << 20;  // the container's own overhead, generously
    for (const auto& [k, v] : weights) bytes += v.numel() * 4;
    samout::check_output_file("output", out, bytes);  // the space, now that the size is known
    // Both writers publish by rename and remove their temporary file when they fail.
    if (out.size() > 3 && out.compare(out.size() - 3, 3, ".h5") == 0) {
      samout::ckpt::write_weights(out, named);
    } else {
      samout::ckpt::write_torch_weights(out, named);
    }
    std::cout << "exported " << named.size() << " tensors of " << dir << " to " << out << "\n";
    return samout::kExitOk;
  });
}
