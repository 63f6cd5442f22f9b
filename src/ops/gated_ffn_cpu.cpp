// gated_ffn's fused fp32 CPU kernels (gated_ffn.h): samout::gated_ffn_forward and _backward.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>

namespace samout::ops {
namespace {
using torch::Tensor;

std::tuple<Tensor, Tensor, Tensor> forward_cpu(const Tensor& y, const Tensor& w1, const Tensor& b1,
                                               const Tensor& wg, const Tensor& bg, const Tensor& w2,
                                               const Tensor& b2) {
  const int64_t f = w1.size(0);
  // The pass over rows reads a and g at f apart: mismatched halves would read past them.
  TORCH_CHECK(wg.size(0) == f && w2.size(1) == f, "gated_ffn_forward: W1 ", w1.sizes(), ", Wg ",
              wg.sizes(), ", W2 ", w2.sizes(), " do not fit");
  const auto y2 = y.reshape({-1, y.size(-1)});
  // (M, 2f) = [a | g]; the copy [W1; Wg] is 2 MB at the seed's size, per call.
  const auto u = at::addmm(torch::cat({b1, bg}), y2, torch::cat({w1, wg}).t());
  const int64_t M = u.size(0);
  auto h = torch::empty({M, f}, u.options());
  const float* up = u.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* a = up + r * 2 * f;
      const float* g = a + f;
      float* hr = hp + r * f;
      for (int64_t j = 0; j < f; ++j) hr[j] = a[j] * std::max(g[j], 0.0f);
    }
  });
  auto shape = y.sizes().vec();
  shape.back() = w2.size(0);
  return {at::addmm(b2, h, w2.t()).view(shape), u, h};
}

// Separate tensors for each gradient (not views of one [dW1; dWg]): a functional op's outputs
// may not alias each other.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_cpu(
    const Tensor& grad_out, const Tensor& y, const Tensor& w1, const Tensor& wg, const Tensor& w2,
    const Tensor& u_in, const Tensor& h, bool need_dy) {
  const auto u = u_in.contiguous();
  const int64_t M = u.size(0), f = h.size(1);
  const auto dout = grad_out.reshape({M, w2.size(0)});
  const auto dh = dout.mm(w2);  // (M, d_out) @ (d_out, f): contiguous

  // d[a | g] in one pass: da = dh * relu(g), dg = dh * a * (g > 0).
  auto du = torch::empty_like(u);
  const float* up = u.data_ptr<float>();
  const float* dhp = dh.data_ptr<float>();
  float* dup = du.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* a = up + r * 2 * f;
      const float* g = a + f;
      const float* d = dhp + r * f;
      float* da = dup + r * 2 * f;
      float* dg = da + f;
      for (int64_t j = 0; j < f; ++j) {
        const bool on = g[j] > 0.0f;
        da[j] = on ? d[j] * g[j] : 0.0f;
        dg[j] = on ? d[j] * a[j] : 0.0f;
      }
    }
  });
  // (M, 2f) @ (2f, d): both projections' dL/dy, summed, in one product.
  const auto dy = need_dy ? du.mm(torch::cat({w1, wg})).view(y.sizes()) : Tensor();
  const auto y2 = y.reshape({M, y.size(-1)});
  const auto da = du.narrow(1, 0, f), dg = du.narrow(1, f, f);
  return {dy, da.t().mm(y2), da.sum(0), dg.t().mm(y2), dg.sum(0), dout.t().mm(h), dout.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CPU, m) {
  m.impl("gated_ffn_forward", TORCH_FN(forward_cpu));
  m.impl("gated_ffn_backward", TORCH_FN(backward_cpu));
}

}  // namespace samout::ops
