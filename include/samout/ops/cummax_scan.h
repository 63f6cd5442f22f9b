// The chunked running maximum (docs/scan.md), shared by the CPU kernel, the CUDA kernel and
// context parallelism: the element rules, per-chunk summaries, and the short scans over chunks.
//
// m[t] = fold(take_max, s, c[0..t]) for a carried state s (torch.cummax's rules, s at position
// -1: ties go to the later element, NaN propagates). [0, n) is split into K chunks of length L (the
// last may be shorter); a chunk is a stretch of time in a kernel or one rank's slice:
//   forward   1. per chunk, in parallel:   M_k = chunk_max(chunk k)
//             2. over k, short:            C = forward_carries(M)      (C_0 = s; returns m[n-1])
//             3. per chunk, in parallel:   m = chunk_forward(chunk k, C_k)
//   backward  (gm = dL/dm, dc = dL/dc from m alone; the caller adds any direct terms)
//             1. per chunk, in parallel:   G_k, full_k = carry_prefix_sum(chunk k)
//             2. over k, short, reversed:  R = backward_carries(G, full)  (returns R_0 = dL/ds)
//             3. per chunk, in parallel:   chunk_backward(chunk k, acc_start(full_k, R_{k+1}))
// full_k (chunk wholly owned by its carry) is chunk_full(M_k, C_k) from the forward, or what
// carry_prefix_sum reports from c and m; both agree. Context parallelism runs phase 2 over the
// all-gathered (N, B, d) summaries (stride B*d); R_0 is the gradient of rank 0's incoming state.
//
// Sums run in a fixed order (within a chunk from its end, starting at 0; over chunks last to
// first), so results depend on L only, not on how chunks map onto threads, blocks or ranks.
// Plain templates on T (float, double; bf16 kernels compute in float) for host and device code: no
// torch, no std containers; arrays are pointers with an element stride (columns of (T, d) etc.).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SAMOUT_HD __host__ __device__ __forceinline__
#else
#define SAMOUT_HD inline
#endif

namespace samout::ops::scan {

// ---- Element rules ---------------------------------------------------------------------------

template <typename T>
SAMOUT_HD T neg_inf() {
  return T(-INFINITY);
}

template <typename T>
SAMOUT_HD bool is_nan(T v) {
  return v != v;
}

// torch.cummax's update: take v when it is >= the running maximum (ties go to the latest position)
// or NaN (NaN propagates, and a later NaN is the latest maximum).
template <typename T>
SAMOUT_HD T take_max(T running, T v) {
  return (v >= running || is_nan(v)) ? v : running;
}

// True when position t owns its running maximum (argmax_t == t): if c_t won, c_t == m_t bitwise
// (or c_t is NaN); if m_{t-1} won, c_t < m_t, or m_t is NaN and c_t is not: c_t == m_t is false.
template <typename T>
SAMOUT_HD bool is_argmax(T c, T m) {
  return c == m || is_nan(c);
}

// True when a chunk's positions so far are all owned by the carry C: their own running maximum
// `local` (from -inf) neither reaches C nor is NaN. With local = M_k this is full_k. A NaN carry
// owns everything up to the chunk's first NaN.
template <typename T>
SAMOUT_HD bool carry_owns(T local, T carry) {
  return !(local >= carry || is_nan(local));
}

// full_k: the whole of chunk k is owned by its carry C_k (its maximum M_k neither >= C_k nor NaN).
template <typename T>
SAMOUT_HD bool chunk_full(T M, T C) {
  return carry_owns(M, C);
}

// ---- Forward ---------------------------------------------------------------------------------

// How many chunks of length L cover n positions, and chunk k's length (the last may be shorter).
SAMOUT_HD int64_t num_chunks(int64_t n, int64_t L) { return (n + L - 1) / L; }
SAMOUT_HD int64_t chunk_length(int64_t n, int64_t L, int64_t k) {
  return (k + 1) * L <= n ? L : n - k * L;
}

// Phase 1. M_k = fold(take_max, -inf, c[0..n)): the chunk's own maximum (NaN when it holds a NaN).
template <typename T>
SAMOUT_HD T chunk_max(const T* c, int64_t n, int64_t stride = 1) {
  T M = neg_inf<T>();
  for (int64_t t = 0; t < n; ++t) M = take_max(M, c[t * stride]);
  return M;
}

// The carry entering the chunk after one whose carry is C and whose maximum is M.
template <typename T>
SAMOUT_HD T combine(T C, T M) {
  return take_max(C, M);
}

// Phase 2. C_0 = state, C_k = combine(C_{k-1}, M_{k-1}) for k < K (C may be M itself). Returns
// combine(C_{K-1}, M_{K-1}): the running maximum at the sequence's end (the next call's state).
template <typename T>
SAMOUT_HD T forward_carries(const T* M, int64_t K, T state, T* C, int64_t stride = 1) {
  T running = state;
  for (int64_t k = 0; k < K; ++k) {
    const T Mk = M[k * stride];
    C[k * stride] = running;
    running = combine(running, Mk);
  }
  return running;
}

// Phase 3. m[t] = fold(take_max, carry, c[0..t]) over one chunk. Returns m[n-1] (the carry itself
// when n = 0).
template <typename T>
SAMOUT_HD T chunk_forward(const T* c, int64_t n, T carry, T* m, int64_t stride = 1) {
  T running = carry;
  for (int64_t t = 0; t < n; ++t) {
    running = take_max(running, c[t * stride]);
    m[t * stride] = running;
  }
  return running;
}

// ---- Backward --------------------------------------------------------------------------------
// gm[t] = dL/dm[t]. The carry-owned positions of a chunk form a prefix (the chunk's own running
// maximum only grows); its gm sum G_k goes to whoever owns the carry.

// One step of a reverse pass: acc gathers gm of later positions whose maximum is owned at or before
// t; at a position owning its maximum it is released (returned) and reset. Returns what t receives.
template <typename T>
SAMOUT_HD T release_step(T& acc, T gm, bool owns) {
  const T total = acc + gm;
  acc = owns ? T(0) : total;
  return owns ? total : T(0);
}

// Phase 1. G_k: gm summed over the carry-owned prefix in the reverse pass's order (from 0, prefix
// end to chunk start), bitwise what a reverse pass from 0 leaves. *full = full_k (no position owns
// its maximum).
template <typename T>
SAMOUT_HD T carry_prefix_sum(const T* c, const T* m, const T* gm, int64_t n, bool* full,
                             int64_t stride = 1) {
  T acc = T(0);
  bool owned = false;
  for (int64_t t = n - 1; t >= 0; --t) {
    const bool here = is_argmax(c[t * stride], m[t * stride]);
    acc = here ? T(0) : acc + gm[t * stride];
    owned = owned || here;
  }
  *full = !owned;
  return acc;
}

// What reaches the owner of chunk k's carry: R_k = G_k + (full_k ? R_{k+1} : 0), with R_K = 0.
// (A branch, not + 0: G_k + 0 would turn a -0 into +0.)
template <typename T>
SAMOUT_HD T reverse_combine(T G, bool full, T R_next) {
  return full ? G + R_next : G;
}

// The value a chunk's reverse pass starts from: R_{k+1} when the chunk owns its end (not full_k),
// else 0 (a full chunk releases nothing; R_{k+1} passes through it inside R_k).
template <typename T>
SAMOUT_HD T acc_start(bool full, T R_next) {
  return full ? T(0) : R_next;
}

// Phase 2. R_k for k < K from G_k and full_k, last chunk first (R may be G itself). Returns R_0,
// the gradient of the state.
template <typename T>
SAMOUT_HD T backward_carries(const T* G, const bool* full, int64_t K, T* R, int64_t stride = 1) {
  T R_next = T(0);
  for (int64_t k = K - 1; k >= 0; --k) {
    R_next = reverse_combine(G[k * stride], full[k * stride], R_next);
    R[k * stride] = R_next;
  }
  return R_next;
}

// The same with full_k = chunk_full(M_k, C_k) from the forward's summaries (as a rank knows them).
template <typename T>
SAMOUT_HD T backward_carries(const T* G, const T* M, const T* C, int64_t K, T* R,
                             int64_t stride = 1) {
  T R_next = T(0);
  for (int64_t k = K - 1; k >= 0; --k) {
    R_next = reverse_combine(G[k * stride], chunk_full(M[k * stride], C[k * stride]), R_next);
    R[k * stride] = R_next;
  }
  return R_next;
}

// Phase 3. The reverse pass over one chunk from acc = acc0 (acc_start): dc[t] = what t receives
// (0 where t does not own its maximum). Returns what is left in acc: G_k when acc0 = 0 or the
// chunk is not full (already counted in R_k).
template <typename T>
SAMOUT_HD T chunk_backward(const T* c, const T* m, const T* gm, int64_t n, T acc0, T* dc,
                           int64_t stride = 1) {
  T acc = acc0;
  for (int64_t t = n - 1; t >= 0; --t)
    dc[t * stride] = release_step(acc, gm[t * stride], is_argmax(c[t * stride], m[t * stride]));
  return acc;
}

// ---- Reference: one whole sequence, chunk length L, from the pieces above ---------------------

// m[0..n) for state s. work: K = num_chunks(n, L) values of scratch. Returns m[n-1] (s if n = 0).
template <typename T>
SAMOUT_HD T reference_forward(const T* c, int64_t n, T s, int64_t L, T* m, T* work) {
  const int64_t K = num_chunks(n, L);
  for (int64_t k = 0; k < K; ++k) work[k] = chunk_max(c + k * L, chunk_length(n, L, k));
  const T last = forward_carries(work, K, s, work);  // work: M -> C
  for (int64_t k = 0; k < K; ++k)
    chunk_forward(c + k * L, chunk_length(n, L, k), work[k], m + k * L);
  return last;
}

// dc[0..n) = dL/dc given gm = dL/dm, and returns dL/ds. work: K values, full: K flags of scratch.
template <typename T>
SAMOUT_HD T reference_backward(const T* c, const T* m, const T* gm, int64_t n, int64_t L, T* dc,
                               T* work, bool* full) {
  const int64_t K = num_chunks(n, L);
  for (int64_t k = 0; k < K; ++k)
    work[k] = carry_prefix_sum(c + k * L, m + k * L, gm + k * L, chunk_length(n, L, k), &full[k]);
  const T ds = backward_carries(work, full, K, work);  // work: G -> R
  for (int64_t k = 0; k < K; ++k) {
    const T start = acc_start(full[k], k + 1 < K ? work[k + 1] : T(0));
    chunk_backward(c + k * L, m + k * L, gm + k * L, chunk_length(n, L, k), start, dc + k * L);
  }
  return ds;
}

}  // namespace samout::ops::scan
