// cummax_gate's CUDA kernels, thread by thread, as host-and-device functions over plain pointers:
// cummax_gate.cu only maps blocks and threads onto them and launches; the emulation test
// (cummax_gate_cuda_emulation_test) runs them over an emulated grid on the CPU against the
// composite. The scan's rules come from cummax_scan.h.
//
// docs/scan.md with time chunks: [0, T) of each (row, channel) is cut into K chunks of L steps
// (L a multiple of kChunkAlign; the last may be shorter). A thread owns one (batch row, chunk,
// group of VEC channels); VEC = 16 bytes of channels when every row is 16-byte aligned, else 1.
//   forward 1, summaries (skipped when K = 1): M_k = chunk max of c      -> summaries (B, K, d)
//   forward 2+3, outputs: C_k = fold(take_max, state, M_0 .. M_{k-1}) (each thread folds the
//              summaries before its chunk), then m and out; C_k saved  -> chunk_carry (B, K, d)
//   backward A, chunks: one forward pass from C_k, recomputing m from c (no saved (B, T, d) max).
//              Position t owns its m when is_argmax(c_t, m_t), and so every later position up to
//              the next such t. x_t = g_t (a + b + c + alpha2 + alpha5) goes to the owner: the
//              carry-owned prefix sums into G_k; a stretch owned by u sums into dc[u], written
//              when the next argmax closes it. The stretch open at the chunk's end (owner e_k, sum
//              D_k) is written as if nothing came from later chunks; (G_k, e_k, D_k) are recorded,
//              e_k = -1 meaning full_k.                                   -> records (B, K, d)
//   backward B, carries: per (batch row, channel), in a fixed order: R_K = 0, R_k = G_k +
//              (full_k ? R_{k+1} : 0); dc[e_k] = D_k + R_{k+1} is rewritten. R_0 is dropped.
// This is docs/scan.md's phase 3 applied by linearity to the one position getting R_{k+1}, so each
// input is read once, instead of a, b, c and dL/dout again over each carry-owned prefix.
//
// Alpha gradients: per-thread sums of g*b, g*m, g*a, g*c, reduced per block and then over blocks by
// one small kernel, in fixed orders: deterministic, no float atomics.
// Software pipelining: time loops load tiles of TILE steps (all of a tile's loads issued before any
// is used) and issue the next tile's loads before computing the current one.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "samout/ops/cummax_scan.h"

// Full unrolling of the fixed-length loops in device code (tiles, lanes); host compilers do as they
// see fit.
#if defined(__CUDA_ARCH__)
#define SAMOUT_UNROLL _Pragma("unroll")
#else
#define SAMOUT_UNROLL
#endif

namespace samout::ops::gate_cuda {

// ---- Sizes ----------------------------------------------------------------------------------------

constexpr int kThreads = 128;  // threads per block, every kernel
constexpr int kWarp = 32;
constexpr int64_t kMaxChunks = 128;  // bounds the carry fold of phase 2+3 (k summaries per thread)
constexpr int64_t kChunkAlign = 16;  // chunk lengths are multiples of this (every TILE divides it)
constexpr int kSummaryTile = 8;      // steps per tile: summaries (1 load a step)
constexpr int kOutputTile = 4;       // outputs (3 loads a step)
constexpr int kBackwardTile = 2;     // backward chunks (4 loads a step)
static_assert(kChunkAlign % kSummaryTile == 0 && kChunkAlign % kOutputTile == 0 &&
                  kChunkAlign % kBackwardTile == 0,
              "tiles must divide the chunk length");

// Channels per 16-byte vector.
template <typename scalar_t>
constexpr int kVecWidth = static_cast<int>(16 / sizeof(scalar_t));

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Chunks -------------------------------------------------------------------------------------

struct ChunkPlan {
  int64_t K;  // chunks
  int64_t L;  // steps per chunk (a multiple of kChunkAlign); the last chunk holds T - (K-1) L
};

// The chunking with at most `chunks` chunks: L the smallest multiple of kChunkAlign that covers T
// in that many chunks, and K recomputed from L. A fixed point: plan_for_chunks(T, p.K) == p for
// every p it returns, so the backward recovers the forward's L from the saved carries' K alone.
inline ChunkPlan plan_for_chunks(int64_t T, int64_t chunks) {
  const int64_t L = ceil_div(ceil_div(T, std::max<int64_t>(chunks, 1)), kChunkAlign) * kChunkAlign;
  return {ceil_div(T, L), L};
}

// The chunk length of a traced call (torch.compile, fake tensors): its sizes may be symbolic and its
// GPU unknown, so the saved carries hold ceil(T / kTracedChunkLength) chunks. As L is a multiple of
// kChunkAlign, plan_for_chunks keeps every such K (it recomputes L <= kTracedChunkLength, then K).
constexpr int64_t kTracedChunkLength = 128;
static_assert(kTracedChunkLength % kChunkAlign == 0, "a traced chunk is whole aligned pieces");

// Enough chunks that the kernels' threads (columns = B * channel groups per chunk) about fill the
// `resident` threads the GPU holds at once, but never more: one wave, so no block waits for a
// second one. At most kMaxChunks; K = 1 when the columns alone fill the GPU.
inline ChunkPlan plan_chunks(int64_t T, int64_t columns, int64_t resident) {
  const int64_t want = std::clamp<int64_t>(resident / std::max<int64_t>(columns, 1), 1, kMaxChunks);
  return plan_for_chunks(T, want);
}

// ---- Vector loads -------------------------------------------------------------------------------

// VEC channels, loaded and stored as one access (16 bytes when VEC = kVecWidth).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename T>
SAMOUT_HD Pack<T, VEC> load_pack(const T* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const Pack<T, VEC>*>(p);  // one 16-byte load
#else
  Pack<T, VEC> r;
  std::memcpy(&r, p, sizeof(r));
  return r;
#endif
}

template <int VEC, typename T>
SAMOUT_HD void store_pack(T* p, const Pack<T, VEC>& x) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<Pack<T, VEC>*>(p) = x;
#else
  std::memcpy(p, &x, sizeof(x));
#endif
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// The 16-byte path needs every row to start on 16 bytes: d and y's batch and time strides multiples
// of the vector width, every non-null pointer aligned (y's last dim and all else contiguous).
template <typename scalar_t>
inline bool can_vectorize(int64_t d, int64_t sB, int64_t sT,
                          std::initializer_list<const void*> pointers) {
  constexpr int64_t V = kVecWidth<scalar_t>;
  if (d % V != 0 || sB % V != 0 || sT % V != 0) return false;
  for (const void* p : pointers) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

// ---- The grid -----------------------------------------------------------------------------------

// Blocks of kThreads threads, tx along channel groups (a power of two, so that a warp reads
// contiguous channels) and kThreads / tx along work rows (unit = b * K + k: batch row b, chunk k).
// Blocks run over channel tiles first. A 1-D grid, so B * K is not limited by gridDim.y.
struct GridMap {
  int64_t groups;  // channel groups per row: d / VEC
  int64_t K;       // chunks per batch row
  int64_t units;   // work rows: B * K
  int tx;          // threads of a block along channel groups
  int64_t gx;      // blocks along channel groups
  int64_t blocks;  // blocks in all
};

inline GridMap make_grid(int64_t groups, int64_t B, int64_t K) {
  int tx = 1;
  while (tx < groups && tx < kThreads) tx *= 2;
  const int64_t gx = ceil_div(groups, tx), units = B * K;
  return {groups, K, units, tx, gx, gx * ceil_div(units, kThreads / tx)};
}

// The work of thread `thread` of block `block` (channel group grp, batch row b, chunk k); false
// past the edges.
struct Work {
  int64_t b, k, grp;
};

SAMOUT_HD bool work_of(const GridMap& gm, int64_t block, int thread, Work& w) {
  const int64_t bx = block % gm.gx, by = block / gm.gx;
  const int64_t unit = by * (kThreads / gm.tx) + thread / gm.tx;
  w.grp = bx * gm.tx + thread % gm.tx;
  w.b = unit / gm.K;
  w.k = unit % gm.K;
  return w.grp < gm.groups && unit < gm.units;
}

// The chunks and grid of each pass: the forward's K from the threads the GPU holds at once
// (`resident`), the backward's from the forward's saved carries.
struct Launch {
  ChunkPlan plan;
  GridMap grid;
};

template <int VEC>
inline Launch forward_launch(int64_t B, int64_t T, int64_t d, int64_t resident) {
  const ChunkPlan plan = plan_chunks(T, B * (d / VEC), resident);
  return {plan, make_grid(d / VEC, B, plan.K)};
}

template <int VEC>
inline Launch backward_launch(int64_t B, int64_t T, int64_t d, int64_t saved_chunks) {
  const ChunkPlan plan = plan_for_chunks(T, saved_chunks);
  return {plan, make_grid(d / VEC, B, plan.K)};
}

// Blocks of the carry pass (a thread per (batch row, channel)), then the finishing block; none when
// K = 1 (R_1 = 0).
inline int64_t carry_blocks(int64_t B, int64_t d, int64_t K) {
  return K > 1 ? ceil_div(B * d, kThreads) : 0;
}

// ---- Arguments ----------------------------------------------------------------------------------

template <typename scalar_t>
struct GateArgs {
  const scalar_t* y;       // (B, T, 3d) at strides (sB, sT, 1): a at +0, b at +d, c at +2d
  const scalar_t* alphas;  // (5,): alpha1..alpha5
  int64_t B, T, d, sB, sT;
  int64_t K, L;  // the chunks
};

// The scalars of the formula, in the accumulation type.
template <typename acc_t>
struct Coefs {
  acc_t a1, a3, a4, a25;  // alpha1, alpha3, alpha4, alpha2 + alpha5
};

template <typename acc_t, typename scalar_t>
SAMOUT_HD Coefs<acc_t> load_coefs(const scalar_t* alphas) {
  return {acc_t(alphas[0]), acc_t(alphas[2]), acc_t(alphas[3]),
          acc_t(alphas[1]) + acc_t(alphas[4])};
}

// Per-thread alpha gradient sums: g*b (alpha1), g*m (alpha2, alpha5), g*a (alpha3), g*c (alpha4).
template <typename acc_t>
struct AlphaSums {
  acc_t v[4];  // g*b, g*m, g*a, g*c
};

// ---- A tile of time steps -----------------------------------------------------------------------

// NPTR streams of VEC channels over TILE consecutive steps; steps at or past `end` are not loaded.
template <typename scalar_t, int VEC, int TILE, int NPTR>
struct Tile {
  Pack<scalar_t, VEC> x[NPTR][TILE];
};

// Loads the tile starting at step t of each stream (stream i at base[i] + t * stride[i]).
template <typename scalar_t, int VEC, int TILE, int NPTR>
SAMOUT_HD void load_tile(Tile<scalar_t, VEC, TILE, NPTR>& tile, const scalar_t* const (&base)[NPTR],
                         const int64_t (&stride)[NPTR], int64_t t, int64_t end) {
  SAMOUT_UNROLL
  for (int s = 0; s < TILE; ++s) {
    if (t + s < end) {
      SAMOUT_UNROLL
      for (int i = 0; i < NPTR; ++i) tile.x[i][s] = load_pack<VEC>(base[i] + (t + s) * stride[i]);
    }
  }
}

// ---- Forward 1: chunk summaries -----------------------------------------------------------------

// M_k for VEC channels of row b (NaN when the chunk holds one); exact in scalar_t (it is an input).
template <typename scalar_t, int VEC>
SAMOUT_HD void summary_thread(const GateArgs<scalar_t>& g, int64_t b, int64_t k, int64_t grp,
                              scalar_t* __restrict__ summaries) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TILE = kSummaryTile;
  const int64_t j0 = grp * VEC;
  const int64_t t0 = k * g.L, t1 = std::min(t0 + g.L, g.T);
  const scalar_t* const base[1] = {g.y + b * g.sB + 2 * g.d + j0};
  const int64_t stride[1] = {g.sT};
  acc_t m[VEC];
  SAMOUT_UNROLL
  for (int v = 0; v < VEC; ++v) m[v] = scan::neg_inf<acc_t>();
  Tile<scalar_t, VEC, TILE, 1> cur, next;
  load_tile(cur, base, stride, t0, t1);
  for (int64_t t = t0; t < t1; t += TILE) {
    if (t + TILE < t1) load_tile(next, base, stride, t + TILE, t1);
    SAMOUT_UNROLL
    for (int s = 0; s < TILE; ++s) {
      if (t + s < t1) {
        SAMOUT_UNROLL
        for (int v = 0; v < VEC; ++v) m[v] = scan::take_max(m[v], acc_t(cur.x[0][s].v[v]));
      }
    }
    cur = next;
  }
  Pack<scalar_t, VEC> out;
  SAMOUT_UNROLL
  for (int v = 0; v < VEC; ++v) out.v[v] = scalar_t(m[v]);
  store_pack<VEC>(summaries + (b * g.K + k) * g.d + j0, out);
}

// ---- Forward 2+3: carries and outputs -----------------------------------------------------------

// out over chunk k for VEC channels of row b. The carry C_k folds the state and the summaries of
// chunks 0..k-1 (sixteen loads in flight at a time), issued after the chunk's first tile so that both
// latencies overlap. chunk_carry (saved for the backward) and last_m may be null; last_m is written
// by the last chunk.
template <typename scalar_t, int VEC>
SAMOUT_HD void output_thread(const GateArgs<scalar_t>& g, int64_t b, int64_t k, int64_t grp,
                             const scalar_t* __restrict__ state,
                             const scalar_t* __restrict__ summaries, scalar_t* __restrict__ out,
                             scalar_t* __restrict__ chunk_carry, scalar_t* __restrict__ last_m) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TILE = kOutputTile;
  const int64_t j0 = grp * VEC;
  const int64_t t0 = k * g.L, t1 = std::min(t0 + g.L, g.T);
  const scalar_t* yb = g.y + b * g.sB + j0;
  const scalar_t* const base[3] = {yb, yb + g.d, yb + 2 * g.d};
  const int64_t stride[3] = {g.sT, g.sT, g.sT};
  Tile<scalar_t, VEC, TILE, 3> cur, next;
  load_tile(cur, base, stride, t0, t1);

  acc_t m[VEC];
  if (state != nullptr) {
    const Pack<scalar_t, VEC> s = load_pack<VEC>(state + b * g.d + j0);
    SAMOUT_UNROLL
    for (int v = 0; v < VEC; ++v) m[v] = acc_t(s.v[v]);
  } else {
    SAMOUT_UNROLL
    for (int v = 0; v < VEC; ++v) m[v] = scan::neg_inf<acc_t>();
  }
  {
    const scalar_t* sum_b = summaries + b * g.K * g.d + j0;
    // Summary loads in flight; 8 wide packs (bf16) at 16 spill under -Xptxas -warn-spills.
    constexpr int kBatch = VEC >= 8 ? 8 : 16;
    for (int64_t kk = 0; kk < k; kk += kBatch) {
      Pack<scalar_t, VEC> s[kBatch];
      SAMOUT_UNROLL
      for (int i = 0; i < kBatch; ++i) {
        if (kk + i < k) s[i] = load_pack<VEC>(sum_b + (kk + i) * g.d);
      }
      SAMOUT_UNROLL
      for (int i = 0; i < kBatch; ++i) {
        if (kk + i < k) {
          SAMOUT_UNROLL
          for (int v = 0; v < VEC; ++v) m[v] = scan::combine(m[v], acc_t(s[i].v[v]));
        }
      }
    }
  }
  if (chunk_carry != nullptr) {
    Pack<scalar_t, VEC> c;
    SAMOUT_UNROLL
    for (int v = 0; v < VEC; ++v) c.v[v] = scalar_t(m[v]);
    store_pack<VEC>(chunk_carry + (b * g.K + k) * g.d + j0, c);
  }

  const Coefs<acc_t> co = load_coefs<acc_t>(g.alphas);
  scalar_t* ob = out + b * g.T * g.d + j0;
  for (int64_t t = t0; t < t1; t += TILE) {
    if (t + TILE < t1) load_tile(next, base, stride, t + TILE, t1);
    SAMOUT_UNROLL
    for (int s = 0; s < TILE; ++s) {
      if (t + s < t1) {
        Pack<scalar_t, VEC> o;
        SAMOUT_UNROLL
        for (int v = 0; v < VEC; ++v) {
          const acc_t av = acc_t(cur.x[0][s].v[v]), bv = acc_t(cur.x[1][s].v[v]),
                      cv = acc_t(cur.x[2][s].v[v]);
          m[v] = scan::take_max(m[v], cv);
          o.v[v] = scalar_t((av + bv + cv + co.a25) * m[v] + co.a3 * av + co.a1 * bv + co.a4 * cv);
        }
        store_pack<VEC>(ob + (t + s) * g.d, o);
      }
    }
    cur = next;
  }
  if (last_m != nullptr && k == g.K - 1) {
    Pack<scalar_t, VEC> l;
    SAMOUT_UNROLL
    for (int v = 0; v < VEC; ++v) l.v[v] = scalar_t(m[v]);
    store_pack<VEC>(last_m + b * g.d + j0, l);
  }
}

// ---- Backward A: one pass over each chunk -------------------------------------------------------

// The backward's walk over one chunk of one channel in forward time order: docs/scan.md's backward
// phases 1 (G_k, full_k) and 3 (from acc = 0) in one pass, deciding ownership as positions arrive.
// Sums run in time order: deterministic, but not bitwise scan::carry_prefix_sum/chunk_backward.
template <typename T>
struct OwnerWalk {
  T carried;      // G_k so far: gm summed over the carry-owned prefix
  T open;         // dc of `owner` so far: its direct term plus the gm of its stretch
  int32_t owner;  // the position whose stretch is open; -1 while in the carry-owned prefix (full_k)
};

template <typename T>
SAMOUT_HD OwnerWalk<T> owner_walk_start() {
  return {T(0), T(0), -1};
}

// Position t, with `own` its direct term (the part of dc it keeps whoever owns its m) and gm = dL/dm_t.
// Returns dc[t] as known now: final unless t owns its maximum and later positions join its stretch.
// When t closes a stretch that grew after its owner's dc was returned, sets rewrite_pos to that owner
// and rewrite_val to its final dc (else rewrite_pos = -1).
template <typename T>
SAMOUT_HD T owner_walk_step(OwnerWalk<T>& w, int32_t t, bool argmax, T own, T gm,
                            int32_t& rewrite_pos, T& rewrite_val) {
  rewrite_pos = -1;
  if (argmax) {
    if (w.owner >= 0 && w.owner + 1 != t) {
      rewrite_pos = w.owner;
      rewrite_val = w.open;
    }
    w.owner = t;
    w.open = own + gm;
    return w.open;
  }
  if (w.owner >= 0) {
    w.open += gm;
  } else {
    w.carried += gm;
  }
  return own;
}

// At the chunk's last position `last`: the open stretch's owner needs a rewrite unless it is
// `last`; its dc then lacks only R_{k+1}, what later chunks send.
template <typename T>
SAMOUT_HD bool owner_walk_needs_rewrite(const OwnerWalk<T>& w, int32_t last) {
  return w.owner >= 0 && w.owner != last;
}

// What a chunk leaves for the carry pass, per (b, k, channel), each (B, K, d).
template <typename acc_t>
struct ChunkRecords {
  acc_t* carried;   // G_k
  acc_t* open_sum;  // D_k: dc at e_k without what later chunks send
  int32_t* owner;   // e_k: the position (in [0, T)) owning the chunk's last m; -1 when full_k
};

// dL/dy over chunk k for VEC channels of row b (grad_y is contiguous (B, T, 3d); grad_out (B, T, d)),
// the chunk's records, and this thread's alpha sums. m is recomputed from chunk_carry (C_k) and c.
template <typename scalar_t, int VEC>
SAMOUT_HD AlphaSums<at::opmath_type<scalar_t>> backward_chunk_thread(
    const GateArgs<scalar_t>& g, int64_t b, int64_t k, int64_t grp,
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ chunk_carry,
    scalar_t* __restrict__ grad_y, const ChunkRecords<at::opmath_type<scalar_t>>& rec) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TILE = kBackwardTile;
  const int64_t d = g.d, j0 = grp * VEC;
  const int64_t t0 = k * g.L, t1 = std::min(t0 + g.L, g.T);
  const scalar_t* yb = g.y + b * g.sB + j0;
  const scalar_t* const base[4] = {yb, yb + d, yb + 2 * d, grad_out + b * g.T * d + j0};
  const int64_t stride[4] = {g.sT, g.sT, g.sT, d};
  Tile<scalar_t, VEC, TILE, 4> cur, next;
  load_tile(cur, base, stride, t0, t1);

  acc_t m[VEC];
  OwnerWalk<acc_t> walk[VEC];
  {
    const Pack<scalar_t, VEC> c = load_pack<VEC>(chunk_carry + (b * g.K + k) * d + j0);
    SAMOUT_UNROLL
    for (int v = 0; v < VEC; ++v) {
      m[v] = acc_t(c.v[v]);
      walk[v] = owner_walk_start<acc_t>();
    }
  }
  const Coefs<acc_t> co = load_coefs<acc_t>(g.alphas);
  AlphaSums<acc_t> sums{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
  scalar_t* dcb = grad_y + b * g.T * 3 * d + 2 * d + j0;  // dc of row t at dcb + t * 3d
  for (int64_t t = t0; t < t1; t += TILE) {
    if (t + TILE < t1) load_tile(next, base, stride, t + TILE, t1);
    SAMOUT_UNROLL
    for (int s = 0; s < TILE; ++s) {
      const int64_t ts = t + s;
      if (ts < t1) {
        Pack<scalar_t, VEC> da, db, dc;
        SAMOUT_UNROLL
        for (int v = 0; v < VEC; ++v) {
          const acc_t av = acc_t(cur.x[0][s].v[v]), bv = acc_t(cur.x[1][s].v[v]),
                      cv = acc_t(cur.x[2][s].v[v]), gv = acc_t(cur.x[3][s].v[v]);
          const acc_t mv = scan::take_max(m[v], cv);
          m[v] = mv;
          da.v[v] = scalar_t(gv * (mv + co.a3));
          db.v[v] = scalar_t(gv * (mv + co.a1));
          int32_t pos;
          acc_t val;
          dc.v[v] =
              scalar_t(owner_walk_step(walk[v], static_cast<int32_t>(ts), scan::is_argmax(cv, mv),
                                       gv * (mv + co.a4), gv * (av + bv + cv + co.a25), pos, val));
          if (pos >= 0) dcb[static_cast<int64_t>(pos) * 3 * d + v] = scalar_t(val);
          sums.v[0] += gv * bv;
          sums.v[1] += gv * mv;
          sums.v[2] += gv * av;
          sums.v[3] += gv * cv;
        }
        scalar_t* row = dcb - 2 * d + ts * 3 * d;
        store_pack<VEC>(row, da);
        store_pack<VEC>(row + d, db);
        store_pack<VEC>(row + 2 * d, dc);
      }
    }
    cur = next;
  }
  const int64_t r0 = (b * g.K + k) * d + j0;
  SAMOUT_UNROLL
  for (int v = 0; v < VEC; ++v) {
    // The stretch open at the chunk's end, as if later chunks sent nothing (+R_{k+1}: carry pass).
    if (owner_walk_needs_rewrite(walk[v], static_cast<int32_t>(t1 - 1))) {
      dcb[static_cast<int64_t>(walk[v].owner) * 3 * d + v] = scalar_t(walk[v].open);
    }
    rec.carried[r0 + v] = walk[v].carried;
    rec.open_sum[r0 + v] = walk[v].open;
    rec.owner[r0 + v] = walk[v].owner;
  }
  return sums;
}

// ---- Backward B: the carries across chunks ------------------------------------------------------

// For channel j of row b: R from the last chunk back (a fixed order), rewriting dc at the owner of
// each chunk's end with what the later chunks send it. Loads run four chunks ahead.
template <typename scalar_t, typename acc_t>
SAMOUT_HD void carry_thread(int64_t T, int64_t d, int64_t K, const acc_t* __restrict__ carried,
                            const acc_t* __restrict__ open_sum, const int32_t* __restrict__ owner,
                            scalar_t* __restrict__ grad_y, int64_t b, int64_t j) {
  constexpr int kBatch = 4;
  acc_t R = acc_t(0);  // R_{k+1}: what chunks after k send to the owner of chunk k's end
  const int64_t rb = b * K * d + j;
  scalar_t* dcb = grad_y + b * T * 3 * d + 2 * d + j;
  for (int64_t k0 = K - 1; k0 >= 0; k0 -= kBatch) {
    acc_t gk[kBatch], dk[kBatch];
    int32_t ek[kBatch];
    SAMOUT_UNROLL
    for (int i = 0; i < kBatch; ++i) {
      if (k0 - i >= 0) {
        const int64_t r = rb + (k0 - i) * d;
        gk[i] = carried[r];
        dk[i] = open_sum[r];
        ek[i] = owner[r];
      }
    }
    SAMOUT_UNROLL
    for (int i = 0; i < kBatch; ++i) {
      if (k0 - i >= 0) {
        const bool full = ek[i] < 0;
        // R_K = 0: the last chunk's open stretch was already written in full.
        if (!full && k0 - i < K - 1) dcb[static_cast<int64_t>(ek[i]) * 3 * d] = scalar_t(dk[i] + R);
        R = scan::reverse_combine(gk[i], full, R);
      }
    }
  }
}

// ---- Finish: the alpha gradients ----------------------------------------------------------------

// Thread `tid` of `nthreads` adds partials tid, tid + nthreads, ... in order; the caller then adds
// the threads' sums in a fixed tree. partials: (n, 4).
template <typename acc_t>
SAMOUT_HD AlphaSums<acc_t> strided_partial_sums(const acc_t* __restrict__ partials, int64_t n,
                                                int tid, int nthreads) {
  AlphaSums<acc_t> s{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
  for (int64_t i = tid; i < n; i += nthreads) {
    SAMOUT_UNROLL
    for (int q = 0; q < 4; ++q) s.v[q] += partials[i * 4 + q];
  }
  return s;
}

// dL/dalpha1..5 from the four totals (alpha2 and alpha5 both multiply m).
template <typename scalar_t, typename acc_t>
SAMOUT_HD void write_alpha_grads(const AlphaSums<acc_t>& total, scalar_t* grad_alphas) {
  grad_alphas[0] = scalar_t(total.v[0]);
  grad_alphas[1] = scalar_t(total.v[1]);
  grad_alphas[2] = scalar_t(total.v[2]);
  grad_alphas[3] = scalar_t(total.v[3]);
  grad_alphas[4] = scalar_t(total.v[1]);
}

}  // namespace samout::ops::gate_cuda
