#include "samout/train/mfu.h"

#include <algorithm>
#include <cctype>

namespace samout::train {

namespace {

struct Card {
  const char* match;  // substring of the lower-cased device name
  double peak[3];     // dense TFLOP/s, indexed by MathMode: bf16, tf32, fp32
};

// Order matters: the first match wins ("h100 pcie" before "h100", "h100 nvl" too).
constexpr Card kCards[] = {
    {"h200", {989.4, 494.7, 66.9}},       // H200 SXM: the H100 SXM's compute
    {"h100 pcie", {756.0, 378.0, 51.2}},  //
    {"h100 nvl", {835.0, 417.5, 60.0}},   //
    {"h100", {989.4, 494.7, 66.9}},       // H100 SXM ("NVIDIA H100 80GB HBM3")
    {"a100", {312.0, 156.0, 19.5}},       // SXM and PCIe
};

}  // namespace

double peak_tflops(const std::string& device_name, MathMode mode) {
  std::string name = device_name;
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const auto& card : kCards)
    if (name.find(card.match) != std::string::npos) return card.peak[static_cast<int>(mode)];
  return 0.0;
}

double mfu(double tokens_per_s_per_device, double num_parameters, double peak) {
  if (peak <= 0) return 0.0;
  return 6.0 * num_parameters * tokens_per_s_per_device / (peak * 1e12);
}

}  // namespace samout::train
