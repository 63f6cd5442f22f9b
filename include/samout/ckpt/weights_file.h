// Model weights as HDF5: one float32 dataset per parameter at the root, named with docs/model.md's
// names (the seed's state_dict keys), so h5py reads it with no code of ours:
//     SamOut(...).load_state_dict({k: torch.from_numpy(v[()]) for k, v in h5py.File(path).items()})
// Written to a temporary name, fsynced and renamed (a reader never sees half a file); a failed write
// (a full disk) removes its temporary file.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace samout::ckpt {

void write_weights(const std::string& path,
                   const torch::OrderedDict<std::string, torch::Tensor>& named);

// The same weights as a dict {name: tensor} that Python's torch.load reads (temporary name, rename).
void write_torch_weights(const std::string& path,
                         const torch::OrderedDict<std::string, torch::Tensor>& named);

// Reads either kind (an HDF5 weights file, or a dict of tensors from write_torch_weights or Python's
// torch.save(dict(model.state_dict()), path)); UsageError naming the file when it is neither.
std::map<std::string, torch::Tensor> read_weights(const std::string& path);

// Copies `weights` into the module's parameters; every parameter must be present with its shape.
void load_into(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
               const std::string& source);

}  // namespace samout::ckpt
