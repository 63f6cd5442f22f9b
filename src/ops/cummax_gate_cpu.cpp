// The fused cummax_gate CPU kernels, on the chunked scan of samout/ops/cummax_scan.h.
// Tasks are (batch row, tile of <= kTile channels, chunk of kChunk steps); time is the outer loop,
// so the inner channel loop reads contiguous a, b, c and vectorises, its state in local arrays.
// Two schedules, chosen by thread count, compute the same bits:
//   serial over time  one task per (b, tile) walks its chunks in order (forward) or reverse
//                     (backward), when there are enough (b, tile) pairs for the threads;
//   time-parallel     docs/scan.md's three phases, each an at::parallel_for (small B, long T).
// Chunk length and tiles depend on the shape only, and both schedules do the chunked scan's
// arithmetic (the serial walk also keeps each chunk's own G_k), so results are bitwise the same at
// any thread count. The alpha gradients are summed per task and reduced in task order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "samout/ops/cummax_gate.h"
#include "samout/ops/cummax_scan.h"

namespace samout::ops {

namespace {

constexpr int64_t kTile = 512;   // channels per task: a whole row of y's thirds at d = 512 (2 KB)
constexpr int64_t kChunk = 256;  // time steps per chunk: the unit of the scan's arithmetic

// How (B, T, d) is cut into tasks. W, L and K depend on the shape alone (they fix the backward's
// rounding); time_parallel only picks the schedule.
struct Plan {
  int64_t B, T, d;
  int64_t W;       // channels per tile (the last tile may be narrower)
  int64_t ntiles;  // ceil(d / W)
  int64_t L, K;    // chunk length and number of chunks
  bool time_parallel;

  int64_t groups() const { return B * ntiles; }  // (b, tile) pairs
  int64_t b_of(int64_t g) const { return g / ntiles; }
  int64_t j0_of(int64_t g) const { return (g % ntiles) * W; }
  int64_t w_of(int64_t g) const { return std::min(W, d - j0_of(g)); }
  int64_t t0_of(int64_t k) const { return k * L; }
  int64_t t1_of(int64_t k) const { return k * L + scan::chunk_length(T, L, k); }
};

Plan make_plan(int64_t B, int64_t T, int64_t d) {
  Plan p;
  p.B = B;
  p.T = T;
  p.d = d;
  p.W = std::min(d, kTile);
  p.ntiles = (d + p.W - 1) / p.W;
  p.L = kChunk;
  p.K = scan::num_chunks(T, p.L);
  // Fewer than 4 (b, tile) tasks a thread leaves threads idle or unbalanced: split time too.
  p.time_parallel = p.K > 1 && p.groups() < 4 * static_cast<int64_t>(at::get_num_threads());
  return p;
}

template <typename scalar_t>
class Kernels {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  Kernels(const Plan& plan, const torch::Tensor& y, const torch::Tensor& alphas)
      : p_(plan), sB_(y.stride(0)), sT_(y.stride(1)), yp_(y.data_ptr<scalar_t>()) {
    const auto al = alphas.accessor<scalar_t, 1>();
    a1_ = al[0];
    a3_ = al[2];
    a4_ = al[3];
    a25_ = acc_t(al[1]) + acc_t(al[4]);
  }

  // out, m_saved: (B, T, d) contiguous (m_saved may be null); state (null: -inf), last_m: (B, d).
  void forward(const scalar_t* state, scalar_t* out, scalar_t* m_saved, scalar_t* last_m) const {
    const Plan& p = p_;
    const int64_t d = p.d;
    if (!p.time_parallel) {
      at::parallel_for(0, p.groups(), 1, [&](int64_t begin, int64_t end) {
        std::array<acc_t, kTile> m;
        for (int64_t g = begin; g < end; ++g) {
          const int64_t b = p.b_of(g), j0 = p.j0_of(g), w = p.w_of(g);
          for (int64_t j = 0; j < w; ++j) m[j] = initial_state(state, b, j0 + j);
          forward_rows(b, j0, w, 0, p.T, m.data(), out, m_saved);
          for (int64_t j = 0; j < w; ++j) last_m[b * d + j0 + j] = scalar_t(m[j]);
        }
      });
      return;
    }
    // summ[(g K + k) W + j]: chunk k's maximum M_k, then (phase 2, in place) its carry C_k.
    std::vector<acc_t> summ(p.groups() * p.K * p.W);
    at::parallel_for(0, p.groups() * p.K, 1, [&](int64_t begin, int64_t end) {  // phase 1
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / p.K, k = task % p.K;
        chunk_maxima(p.b_of(g), p.j0_of(g), p.w_of(g), p.t0_of(k), p.t1_of(k), &summ[task * p.W]);
      }
    });
    at::parallel_for(0, p.groups(), 1, [&](int64_t begin, int64_t end) {  // phase 2
      for (int64_t g = begin; g < end; ++g) {
        const int64_t b = p.b_of(g), j0 = p.j0_of(g), w = p.w_of(g);
        for (int64_t j = 0; j < w; ++j) {
          acc_t* col = &summ[g * p.K * p.W + j];
          const acc_t last =
              scan::forward_carries(col, p.K, initial_state(state, b, j0 + j), col, p.W);
          last_m[b * d + j0 + j] = scalar_t(last);
        }
      }
    });
    at::parallel_for(0, p.groups() * p.K, 1, [&](int64_t begin, int64_t end) {  // phase 3
      std::array<acc_t, kTile> m;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / p.K, k = task % p.K, w = p.w_of(g);
        std::copy_n(&summ[task * p.W], w, m.data());
        forward_rows(p.b_of(g), p.j0_of(g), w, p.t0_of(k), p.t1_of(k), m.data(), out, m_saved);
      }
    });
  }

  // grad_out, m_saved: (B, T, d), grad_y: (B, T, 3d), contiguous. sums: g*b, g*m, g*a, g*c.
  void backward(const scalar_t* grad_out, const scalar_t* m_saved, scalar_t* grad_y,
                std::array<double, 4>& sums) const {
    const Plan& p = p_;
    Streams s{grad_out, m_saved, grad_y};
    // Per-task partial sums of the alpha gradients, reduced below in task order.
    std::vector<std::array<double, 4>> partial(p.groups() * p.K);
    if (!p.time_parallel) {
      at::parallel_for(0, p.groups(), 1, [&](int64_t begin, int64_t end) {
        // R[j]: R_{k+1} entering chunk k; acc0, owned: the chunk's own G_k and whether any of its
        // positions owns its maximum (not full_k), as phase 1 would find them.
        std::array<acc_t, kTile> acc, R, acc0;
        std::array<bool, kTile> owned;
        for (int64_t g = begin; g < end; ++g) {
          const int64_t b = p.b_of(g), j0 = p.j0_of(g), w = p.w_of(g);
          std::fill_n(R.data(), w, acc_t(0));
          for (int64_t k = p.K - 1; k >= 0; --k) {
            std::copy_n(R.data(), w, acc.data());  // a full chunk releases nothing: same as 0
            if (k == 0) {  // R_0 would be the state's gradient, which is not needed: no tracking
              partial[g * p.K] = backward_rows</*kTrackG=*/false>(
                  s, b, j0, w, p.t0_of(0), p.t1_of(0), acc.data(), nullptr, nullptr);
              break;
            }
            std::fill_n(acc0.data(), w, acc_t(0));
            std::fill_n(owned.data(), w, false);
            partial[g * p.K + k] = backward_rows</*kTrackG=*/true>(
                s, b, j0, w, p.t0_of(k), p.t1_of(k), acc.data(), acc0.data(), owned.data());
            for (int64_t j = 0; j < w; ++j) R[j] = scan::reverse_combine(acc0[j], !owned[j], R[j]);
          }
          // What is left in R is R_0, the state's gradient: the state is not differentiated.
        }
      });
    } else {
      // G[(g K + k) W + j]: G_k, then (phase 2, in place) R_k; full likewise.
      std::vector<acc_t> G(p.groups() * p.K * p.W);
      std::unique_ptr<bool[]> full(new bool[p.groups() * p.K * p.W]);
      at::parallel_for(0, p.groups() * p.K, 1, [&](int64_t begin, int64_t end) {  // phase 1
        std::array<bool, kTile> owned;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t g = task / p.K, k = task % p.K, w = p.w_of(g);
          acc_t* Gk = &G[task * p.W];
          std::fill_n(Gk, w, acc_t(0));
          std::fill_n(owned.data(), w, false);
          carry_prefix_rows(s, p.b_of(g), p.j0_of(g), w, p.t0_of(k), p.t1_of(k), Gk, owned.data());
          for (int64_t j = 0; j < w; ++j) full[task * p.W + j] = !owned[j];
        }
      });
      at::parallel_for(0, p.groups(), 1, [&](int64_t begin, int64_t end) {  // phase 2
        for (int64_t g = begin; g < end; ++g) {
          for (int64_t j = 0, w = p.w_of(g); j < w; ++j) {
            const int64_t col = g * p.K * p.W + j;
            // R_0 dropped, as above.
            scan::backward_carries(&G[col], &full[col], p.K, &G[col], p.W);
          }
        }
      });
      at::parallel_for(0, p.groups() * p.K, 1, [&](int64_t begin, int64_t end) {  // phase 3
        std::array<acc_t, kTile> acc;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t g = task / p.K, k = task % p.K, w = p.w_of(g);
          for (int64_t j = 0; j < w; ++j) {
            const acc_t R_next = k + 1 < p.K ? G[(task + 1) * p.W + j] : acc_t(0);
            acc[j] = scan::acc_start(full[task * p.W + j], R_next);
          }
          partial[task] = backward_rows</*kTrackG=*/false>(
              s, p.b_of(g), p.j0_of(g), w, p.t0_of(k), p.t1_of(k), acc.data(), nullptr, nullptr);
        }
      });
    }
    sums = {0, 0, 0, 0};
    for (const auto& q : partial)
      for (int i = 0; i < 4; ++i) sums[i] += q[i];
  }

 private:
  struct Streams {
    const scalar_t* g;  // dL/dout (B, T, d)
    const scalar_t* m;  // the saved running max (B, T, d)
    scalar_t* gy;       // dL/dy (B, T, 3d)
  };

  acc_t initial_state(const scalar_t* state, int64_t b, int64_t j) const {
    return state ? acc_t(state[b * p_.d + j]) : scan::neg_inf<acc_t>();
  }

  // dL/dm at one position; every pass that sums it uses this one expression, so all round alike.
  acc_t gm_of(acc_t g, acc_t av, acc_t bv, acc_t cv) const { return g * (av + bv + cv + a25_); }

  // Rows [t0, t1) of batch row b, channels [j0, j0 + w), from the running maxima m[0..w).
  void forward_rows(int64_t b, int64_t j0, int64_t w, int64_t t0, int64_t t1, acc_t* m,
                    scalar_t* out, scalar_t* m_saved) const {
    const int64_t d = p_.d;
    for (int64_t t = t0; t < t1; ++t) {
      const scalar_t* ya = yp_ + b * sB_ + t * sT_ + j0;  // a; b at +d; c at +2d
      scalar_t* ot = out + (b * p_.T + t) * d + j0;
      for (int64_t j = 0; j < w; ++j) {
        const acc_t av = ya[j], bv = ya[d + j], cv = ya[2 * d + j];
        const acc_t mv = scan::take_max(m[j], cv);
        m[j] = mv;
        ot[j] = scalar_t((av + bv + cv + a25_) * mv + a3_ * av + a1_ * bv + a4_ * cv);
      }
      if (m_saved) {
        scalar_t* mt = m_saved + (b * p_.T + t) * d + j0;
        for (int64_t j = 0; j < w; ++j) mt[j] = scalar_t(m[j]);
      }
    }
  }

  // Phase 1 of the forward: M[0..w) = each channel's maximum over rows [t0, t1).
  void chunk_maxima(int64_t b, int64_t j0, int64_t w, int64_t t0, int64_t t1, acc_t* M) const {
    std::fill_n(M, w, scan::neg_inf<acc_t>());
    for (int64_t t = t0; t < t1; ++t) {
      const scalar_t* yc = yp_ + b * sB_ + t * sT_ + 2 * p_.d + j0;
      for (int64_t j = 0; j < w; ++j) M[j] = scan::take_max(M[j], acc_t(yc[j]));
    }
  }

  // Backward phase 1: the reverse pass without writes. Leaves G_k in acc0 (starting at 0); sets
  // owned[j] when some row owns its maximum (the chunk is not full).
  void carry_prefix_rows(const Streams& s, int64_t b, int64_t j0, int64_t w, int64_t t0, int64_t t1,
                         acc_t* acc0, bool* owned) const {
    const int64_t d = p_.d;
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const scalar_t* ya = yp_ + b * sB_ + t * sT_ + j0;
      const int64_t row = (b * p_.T + t) * d + j0;
      const scalar_t* gt = s.g + row;
      const scalar_t* mt = s.m + row;
      for (int64_t j = 0; j < w; ++j) {
        const acc_t cv = ya[2 * d + j];
        const bool here = scan::is_argmax(cv, acc_t(mt[j]));
        scan::release_step(acc0[j], gm_of(gt[j], ya[j], ya[d + j], cv), here);
        owned[j] = owned[j] || here;
      }
    }
  }

  // The reverse pass over rows [t1 - 1, t0] from acc[0..w), writing dL/dy; with kTrackG also phase
  // 1's accumulator (acc0, owned). Returns the chunk's alpha sums.
  template <bool kTrackG>
  std::array<double, 4> backward_rows(const Streams& s, int64_t b, int64_t j0, int64_t w,
                                      int64_t t0, int64_t t1, acc_t* acc, acc_t* acc0,
                                      bool* owned) const {
    const int64_t d = p_.d;
    // Per-channel partial sums of the alpha gradients: one accumulator per lane keeps the channel
    // loop free of a loop-carried dependency (so it vectorises) and sums only L terms in acc_t
    // before the lanes are added in double.
    std::array<acc_t, kTile> sb, sm, sa, sc;
    std::fill_n(sb.data(), w, acc_t(0));
    std::fill_n(sm.data(), w, acc_t(0));
    std::fill_n(sa.data(), w, acc_t(0));
    std::fill_n(sc.data(), w, acc_t(0));
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const scalar_t* ya = yp_ + b * sB_ + t * sT_ + j0;
      const int64_t row = (b * p_.T + t) * d + j0;
      const scalar_t* gt = s.g + row;
      const scalar_t* mt = s.m + row;
      scalar_t* gya = s.gy + (b * p_.T + t) * 3 * d + j0;
      for (int64_t j = 0; j < w; ++j) {
        const acc_t av = ya[j], bv = ya[d + j], cv = ya[2 * d + j];
        const acc_t g = gt[j], mv = mt[j];
        gya[j] = scalar_t(g * (mv + a3_));
        gya[d + j] = scalar_t(g * (mv + a1_));
        const acc_t gm = gm_of(g, av, bv, cv);
        const bool here = scan::is_argmax(cv, mv);
        gya[2 * d + j] = scalar_t(g * (mv + a4_) + scan::release_step(acc[j], gm, here));
        if constexpr (kTrackG) {
          scan::release_step(acc0[j], gm, here);
          owned[j] = owned[j] || here;
        }
        sb[j] += g * bv;
        sm[j] += g * mv;
        sa[j] += g * av;
        sc[j] += g * cv;
      }
    }
    std::array<double, 4> lanes{0, 0, 0, 0};
    for (int64_t j = 0; j < w; ++j) {
      lanes[0] += sb[j];
      lanes[1] += sm[j];
      lanes[2] += sa[j];
      lanes[3] += sc[j];
    }
    return lanes;
  }

  const Plan& p_;
  int64_t sB_, sT_;  // y's strides; its last dim is contiguous
  const scalar_t* yp_;
  acc_t a1_, a3_, a4_, a25_;
};

// The registered forward and backward ops' CPU kernels. The forward saves m (B, T, d) for the
// backward, or nothing when chunks = 0.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> forward_kernel(
    const torch::Tensor& y, const torch::Tensor& alphas, const std::optional<torch::Tensor>& state,
    int64_t chunks) {
  GateCall c = gate_forward_call(y, alphas, state);
  TORCH_CHECK(chunks == 0 || chunks == c.T, "cummax_gate_forward (CPU): the running max is saved ",
              "at every position, so chunks must be 0 or T = ", c.T, ", got ", chunks);
  auto saved = torch::empty({c.B, chunks, c.d}, c.y.options());
  const Plan plan = make_plan(c.B, c.T, c.d);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, c.y.scalar_type(), "cummax_gate_forward_cpu", [&] {
    Kernels<scalar_t>(plan, c.y, c.alphas)
        .forward(c.state.defined() ? c.state.data_ptr<scalar_t>() : nullptr,
                 c.out.data_ptr<scalar_t>(), chunks > 0 ? saved.data_ptr<scalar_t>() : nullptr,
                 c.last_m.data_ptr<scalar_t>());
  });
  return {c.out, c.last_m, saved};
}

std::tuple<torch::Tensor, torch::Tensor> backward_kernel(const torch::Tensor& grad_out,
                                                         const torch::Tensor& y,
                                                         const torch::Tensor& alphas,
                                                         const torch::Tensor& saved) {
  GateCall c = gate_backward_call(grad_out, y, alphas);
  TORCH_CHECK(saved.sizes() == c.grad_out.sizes(), "cummax_gate_backward (CPU): the forward's ",
              "running max must be (B, T, d) = ", c.grad_out.sizes(), ", got ", saved.sizes());
  const torch::Tensor m_saved = saved.contiguous();
  const Plan plan = make_plan(c.B, c.T, c.d);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, c.y.scalar_type(), "cummax_gate_backward_cpu", [&] {
    std::array<double, 4> tot;
    Kernels<scalar_t>(plan, c.y, c.alphas)
        .backward(c.grad_out.data_ptr<scalar_t>(), m_saved.data_ptr<scalar_t>(),
                  c.grad_y.data_ptr<scalar_t>(), tot);
    // dalpha1 = sum g*b, dalpha2 = dalpha5 = sum g*m, dalpha3 = sum g*a, dalpha4 = sum g*c.
    auto ga = c.grad_alphas.accessor<scalar_t, 1>();
    ga[0] = scalar_t(tot[0]);
    ga[1] = scalar_t(tot[1]);
    ga[2] = scalar_t(tot[2]);
    ga[3] = scalar_t(tot[3]);
    ga[4] = scalar_t(tot[1]);
  });
  return {c.grad_y, c.grad_alphas};
}

}  // namespace

TORCH_LIBRARY_IMPL(samout, CPU, m) {
  m.impl("cummax_gate_forward", TORCH_FN(forward_kernel));
  m.impl("cummax_gate_backward", TORCH_FN(backward_kernel));
}

}  // namespace samout::ops
