#include "samout/ckpt/weights_file.h"

#include <unistd.h>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/serialize.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include "samout/ckpt/durable_file.h"
#include "samout/common/error.h"
#include "samout/data/h5.h"

namespace samout::ckpt {

using data::H5Id;

void write_weights(const std::string& path,
                   const torch::OrderedDict<std::string, torch::Tensor>& named) {
  const std::string tmp = path + ".tmp";
  try {
    H5Id file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!file.valid()) throw std::runtime_error("cannot create " + tmp);
    for (const auto& kv : named) {
      auto t = kv.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
      std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
      H5Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
      H5Id ds(H5Dcreate2(file.get(), kv.key().c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                         H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
      if (!ds.valid() ||
          H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
        throw std::runtime_error("cannot write " + kv.key() + " to " + tmp);
    }
    if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) throw std::runtime_error("cannot flush " + tmp);
    file.reset();  // closed before it is published (or removed)
    publish_file(tmp, path);
  } catch (...) {
    std::remove(tmp.c_str());  // a full disk leaves no half-written file behind
    throw;
  }
}

void write_torch_weights(const std::string& path,
                         const torch::OrderedDict<std::string, torch::Tensor>& named) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& kv : named)
    dict.insert(kv.key(), kv.value().detach().to(torch::kCPU, torch::kFloat32).contiguous());
  // torch::pickle_save's format, but with the dict's types left untagged: a tagged dict needs
  // torch.jit._pickle.restore_type_tag, which torch.load's default weights_only mode refuses.
  std::vector<char> pickled;
  torch::jit::Pickler pickler(
      [&](const char* buf, size_t n) { pickled.insert(pickled.end(), buf, buf + n); },
      /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
      /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(dict);
  pickler.stop();
  std::vector<char> bytes;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    bytes.insert(bytes.end(), p, p + n);
    return n;
  });
  torch::jit::writeArchiveAndTensors("data", pickled.data(), pickled.size(), pickler.tensorData(),
                                     writer);
  writer.writeEndOfFile();
  write_file_atomic(path, {std::string_view(bytes.data(), bytes.size())});
}

std::map<std::string, torch::Tensor> read_weights(const std::string& path) {
  require(::access(path.c_str(), R_OK) == 0, path + ": no such file");
  std::map<std::string, torch::Tensor> out;
  if (H5Fis_hdf5(path.c_str()) <= 0) {  // a torch.save'd dict
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    c10::IValue v;
    try {
      v = torch::pickle_load(bytes);
    } catch (const std::exception&) {
      throw UsageError(path + ": neither an HDF5 weights file nor a torch.save'd dict of tensors");
    }
    require(v.isGenericDict(), path + ": holds a " + v.tagKind() + ", not a dict of tensors");
    for (const auto& kv : v.toGenericDict()) {
      require(kv.key().isString() && kv.value().isTensor(),
              path + ": holds a non-tensor entry; expected {name: tensor}");
      out[kv.key().toStringRef()] = kv.value().toTensor().to(torch::kFloat32);
    }
    return out;
  }
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  require(file.valid(), path + ": cannot open");
  H5Literate(
      file.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t loc, const char* name, const H5L_info_t*, void* op) -> herr_t {
        auto& m = *static_cast<std::map<std::string, torch::Tensor>*>(op);
        H5Id ds(H5Dopen2(loc, name, H5P_DEFAULT), H5Dclose);
        if (!ds.valid()) return 0;  // groups and others are not weights
        H5Id space(H5Dget_space(ds.get()), H5Sclose);
        const int rank = H5Sget_simple_extent_ndims(space.get());
        std::vector<hsize_t> dims(rank);
        H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
        auto t = torch::empty(std::vector<int64_t>(dims.begin(), dims.end()), torch::kFloat32);
        if (H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
          return -1;
        m[name] = t;
        return 0;
      },
      &out);
  return out;
}

void load_into(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& weights,
               const std::string& source) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters()) {
    auto it = weights.find(p.key());
    require(it != weights.end(), source + ": missing parameter " + p.key());
    require(it->second.sizes() == p.value().sizes(),
            source + ": " + p.key() + " has shape " + c10::str(it->second.sizes()) +
                ", model wants " + c10::str(p.value().sizes()));
    p.value().copy_(it->second);
  }
}

}  // namespace samout::ckpt
