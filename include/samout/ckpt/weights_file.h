// Model weights as an HDF5 file: one float32 dataset per parameter, named with SPEC.md's names
// (the seed's state_dict keys, e.g. "decoder_layers.0.self_attention.alpha1"), at the file's root.
// h5py reads it with no code of ours:
//     sd = {k: torch.from_numpy(v[()]) for k, v in h5py.File(path).items()}
//     SamOut(...).load_state_dict(sd)
// Written to a temporary name, fsynced and renamed, so a reader never sees half a file; a write that
// fails (a full disk) removes its temporary file.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace samout::ckpt {

void write_weights(const std::string& path,
                   const torch::OrderedDict<std::string, torch::Tensor>& named);

// The same weights as a file Python's torch.load reads into a dict {name: tensor}, which the seed's
// SamOut takes with load_state_dict (written by torch::pickle_save; temporary name and rename).
void write_torch_weights(const std::string& path,
                         const torch::OrderedDict<std::string, torch::Tensor>& named);

// Reads either kind: an HDF5 weights file, or a torch.save'd dict of name -> tensor (as
// write_torch_weights writes it, or Python's torch.save(dict(model.state_dict()), path)).
// Throws UsageError naming the file when it is neither.
std::map<std::string, torch::Tensor> read_weights(const std::string& path);

// Copies `weights` into the module's parameters; every parameter must be present with its shape.
void load_into(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
               const std::string& source);

}  // namespace samout::ckpt
