// Test helper: reads a dataset or attribute of an HDF5 file written by h5py into a torch::Tensor.
// Used to load goldens produced by the PyTorch reference (tests/python/make_goldens.py).
#pragma once

#include <hdf5.h>
#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace samout::testing {

class H5File {
 public:
  explicit H5File(const std::string& path) : path_(path) {
    id_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (id_ < 0) throw std::runtime_error("cannot open " + path);
  }
  ~H5File() {
    if (id_ >= 0) H5Fclose(id_);
  }
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  // Reads a float (as kFloat32) or integer (as kInt64) dataset with its shape.
  torch::Tensor read(const std::string& name, torch::ScalarType dtype) const {
    hid_t ds = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
    if (ds < 0) throw std::runtime_error(path_ + ": no dataset " + name);
    hid_t space = H5Dget_space(ds);
    const int rank = H5Sget_simple_extent_ndims(space);
    std::vector<hsize_t> dims(rank);
    H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    std::vector<int64_t> shape(dims.begin(), dims.end());
    auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    const hid_t mem = dtype == torch::kFloat32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT64;
    const herr_t rc = H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr());
    H5Sclose(space);
    H5Dclose(ds);
    if (rc < 0) throw std::runtime_error(path_ + ": cannot read " + name);
    return t;
  }

  int64_t attr_int(const std::string& name) const {
    hid_t a = H5Aopen(id_, name.c_str(), H5P_DEFAULT);
    if (a < 0) throw std::runtime_error(path_ + ": no attribute " + name);
    int64_t v = 0;
    H5Aread(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    return v;
  }

 private:
  std::string path_;
  hid_t id_ = -1;
};

}  // namespace samout::testing
