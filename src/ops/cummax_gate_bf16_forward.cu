// cummax_gate's forward kernels for bf16, both vector widths: one translation unit per dtype and
// direction (cummax_gate_launch.h), so that nvcc compiles them in parallel.
#include "cummax_gate_kernels.cuh"

namespace samout::ops::gate_cuda {
template struct ForwardKernels<c10::BFloat16, kVecWidth<c10::BFloat16>>;
template struct ForwardKernels<c10::BFloat16, 1>;
}  // namespace samout::ops::gate_cuda
