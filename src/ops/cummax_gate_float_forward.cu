// cummax_gate's forward kernels for float, both vector widths: one translation unit per dtype and
// direction (cummax_gate_launch.h), so that nvcc compiles them in parallel.
#include "cummax_gate_kernels.cuh"

namespace samout::ops::gate_cuda {
template struct ForwardKernels<float, kVecWidth<float>>;
template struct ForwardKernels<float, 1>;
}  // namespace samout::ops::gate_cuda
