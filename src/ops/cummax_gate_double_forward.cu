// cummax_gate's forward kernels for double, both vector widths: one translation unit per dtype and
// direction (cummax_gate_launch.h), so that nvcc compiles them in parallel.
#include "cummax_gate_kernels.cuh"

namespace samout::ops::gate_cuda {
template struct ForwardKernels<double, kVecWidth<double>>;
template struct ForwardKernels<double, 1>;
}  // namespace samout::ops::gate_cuda
