// samout_info: prints a SamOut configuration's parameter count and, with --names, every parameter.
// Example: samout_info --vocab_size=8460 --hidden=512 --layers=8 --heads=8   -> 21266480
#include <gflags/gflags.h>

#include <iostream>

#include "samout/common/error.h"
#include "samout/common/flags_check.h"
#include "samout/model/samout.h"

DEFINE_int64(vocab_size, 8460, "vocabulary size V");
DEFINE_int64(hidden, 512, "hidden size d");
DEFINE_int64(layers, 8, "decoder layers L");
DEFINE_int64(heads, 8, "heads h (must divide hidden)");
DEFINE_bool(names, false, "also list every parameter with its shape");

int main(int argc, char** argv) {
  samout::start_program("samout_info", "print a SamOut configuration's parameter count", &argc,
                        &argv);
  return samout::run_program("samout_info", [] {
    samout::model::ModelConfig cfg;
    cfg.vocab_size = FLAGS_vocab_size;
    cfg.hidden = FLAGS_hidden;
    cfg.layers = FLAGS_layers;
    cfg.heads = FLAGS_heads;
    cfg.validate();
    // Count the instantiated module's parameters, not the formula: this is the real thing.
    samout::model::SamOut model(cfg);
    int64_t total = 0;
    for (const auto& p : model->named_parameters()) {
      total += p.value().numel();
      if (FLAGS_names) std::cout << p.key() << " " << p.value().sizes() << "\n";
    }
    std::cout << cfg.describe() << " parameters: " << total << "\n";
    return samout::kExitOk;
  });
}
