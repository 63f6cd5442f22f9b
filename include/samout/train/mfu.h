// Model FLOPs utilisation: 6 N FLOPs per token (forward + backward) against the device's dense peak
// for the precision in use. The peaks are the vendors' dense (no sparsity) figures.
#pragma once

#include <string>

namespace samout::train {

// What the matrix products run in: bf16 autocast, fp32 on TF32 tensor cores, or plain fp32. The
// values index mfu.cpp's table of peaks.
enum class MathMode { kBf16 = 0, kTf32 = 1, kFp32 = 2 };

// Dense peak TFLOP/s of the card named `device_name` as cudaGetDeviceProperties reports it ("NVIDIA
// H100 80GB HBM3", "NVIDIA H200", ...); 0 for a card not in the table (then --peak_tflops is needed).
double peak_tflops(const std::string& device_name, MathMode mode);

// Fraction of `peak_tflops` reached by `tokens_per_s_per_device` on a model of `num_parameters`.
double mfu(double tokens_per_s_per_device, double num_parameters, double peak_tflops);

}  // namespace samout::train
