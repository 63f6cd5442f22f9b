// gated_ffn (gated_ffn.h): the ops' schemas, their Meta kernels and the C++ entry.
#include "samout/ops/gated_ffn.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "samout/ops/dispatch.h"

namespace samout::ops {
namespace {
using torch::Tensor;

// Symbolic sizes only: torch.compile and opcheck trace these with SymInts.
std::tuple<Tensor, Tensor, Tensor> forward_meta(const Tensor& y, const Tensor& w1, const Tensor&,
                                                const Tensor&, const Tensor&, const Tensor& w2,
                                                const Tensor&) {
  c10::SymInt rows = 1;
  for (int64_t i = 0; i + 1 < y.dim(); ++i) rows *= y.sym_size(i);
  auto shape = y.sym_sizes().vec();
  shape.back() = w2.sym_size(0);
  const auto f = w1.sym_size(0);
  return {at::empty_symint(shape, y.options()), at::empty_symint({rows, 2 * f}, y.options()),
          at::empty_symint({rows, f}, y.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_meta(
    const Tensor&, const Tensor& y, const Tensor& w1, const Tensor& wg, const Tensor& w2,
    const Tensor&, const Tensor&, bool need_dy) {
  auto like = [](const Tensor& t) { return at::empty_symint(t.sym_sizes(), t.options()); };
  auto rows_of = [](const Tensor& t) { return at::empty_symint({t.sym_size(0)}, t.options()); };
  return {need_dy ? like(y) : Tensor(),
          like(w1),
          rows_of(w1),
          like(wg),
          rows_of(wg),
          like(w2),
          rows_of(w2)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(samout, m) {
  m.def(
      "gated_ffn(Tensor y, Tensor w1, Tensor b1, Tensor wg, Tensor bg, Tensor w2, Tensor b2) -> "
      "Tensor");
  // u = [a | g] (rows, 2f) and h = a * relu(g) (rows, f): what the backward needs.
  m.def(
      "gated_ffn_forward(Tensor y, Tensor w1, Tensor b1, Tensor wg, Tensor bg, Tensor w2, "
      "Tensor b2) -> (Tensor out, Tensor u, Tensor h)");
  // dy is undefined (None) unless need_dy.
  m.def(
      "gated_ffn_backward(Tensor grad_out, Tensor y, Tensor w1, Tensor wg, Tensor w2, Tensor u, "
      "Tensor h, bool need_dy) -> (Tensor dy, Tensor dw1, Tensor db1, Tensor dwg, Tensor dbg, "
      "Tensor dw2, Tensor db2)");
}

TORCH_LIBRARY_IMPL(samout, Meta, m) {
  m.impl("gated_ffn_forward", TORCH_FN(forward_meta));
  m.impl("gated_ffn_backward", TORCH_FN(backward_meta));
}

bool gated_ffn_uses_fused(const Tensor& y, const Tensor& w1, const Tensor& w2) {
  auto fp32_cpu = [](const Tensor& t) {
    return t.is_cpu() && t.scalar_type() == torch::kFloat32 && t.layout() == torch::kStrided;
  };
  // Under CPU autocast the products would run in bf16: the composite keeps those semantics.
  return fp32_cpu(y) && fp32_cpu(w1) && fp32_cpu(w2) && w1.dim() == 2 && w2.dim() == 2 &&
         y.dim() >= 1 && y.sym_size(-1) == w1.sym_size(1) && w2.sym_size(1) == w1.sym_size(0) &&
         !at::autocast::is_autocast_enabled(at::kCPU);
}

Tensor gated_ffn(const Tensor& y, const Tensor& w1, const Tensor& b1, const Tensor& wg,
                 const Tensor& bg, const Tensor& w2, const Tensor& b2) {
  TORCH_CHECK(wg.sizes() == w1.sizes() && b1.dim() == 1 && b1.size(0) == w1.size(0) &&
                  bg.sizes() == b1.sizes() && b2.dim() == 1 && b2.size(0) == w2.size(0),
              "gated_ffn: shapes W1 ", w1.sizes(), ", b1 ", b1.sizes(), ", Wg ", wg.sizes(),
              ", bg ", bg.sizes(), ", W2 ", w2.sizes(), ", b2 ", b2.sizes(), " do not fit");
  static const auto op =
      find_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                     const Tensor&, const Tensor&)>("samout::gated_ffn");
  return op.call(y, w1, b1, wg, bg, w2, b2);
}

}  // namespace samout::ops
