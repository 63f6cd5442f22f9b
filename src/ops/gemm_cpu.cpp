// The CPU matrix product of gemm.h: packing, blocking, threading and the 6 x 16 micro-kernels.
#include "samout/ops/gemm.h"

#include <ATen/Parallel.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "samout/common/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SAMOUT_GEMM_X86 1
#endif

namespace samout::ops {
namespace {

// Register tile: 6 rows x 16 columns = 12 ymm accumulators, plus 2 for B and 1 for a broadcast of A:
// 15 of AVX2's 16 registers. Cache blocking (Zen 3: 32 KiB L1d, 512 KiB L2 per core, shared L3):
// an MC x KC block of A (144 KiB) stays in L2, a KC x NR panel of B (32 KiB) in L1/L2 across a
// column of micro-tiles, and a KC x NC block of B (8 MiB) in L3. KC = 512 rather than the textbook
// 256: the model's K is 512 for most products, so C is written once instead of read and written
// twice; measured on the development machine, one step's products went from ~1450 to ~1230 ms.
constexpr int64_t MR = 6, NR = 16;
static_assert(MR == 6, "pack_a copies a full panel with six unrolled rows");
constexpr int64_t KC = 512, MC = 72, NC = 4096;

// An (i, j) view of a strided matrix: element (i, j) is p[i * rs + j * cs].
struct View {
  const float* p;
  int64_t rs, cs;
  const float& at(int64_t i, int64_t j) const { return p[i * rs + j * cs]; }
};

// A[i0 : i0+mc, k0 : k0+kc] into MR-row panels, k-major within a panel: pa[panel][k][r].
// Rows past the end are zero so the micro-kernel never needs a short variant. Each branch reads A
// along its contiguous direction: packing is memory-bound, and a strided walk across cache lines
// cost as much as a fifth of a product's time.
void pack_a(const View& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* pa) {
  const int64_t panels = (mc + MR - 1) / MR;
  if (A.cs == 1) {  // rows contiguous along k
    for (int64_t ip = 0; ip < mc; ip += MR) {
      float* dst = pa + ip * kc;
      const int64_t rows = std::min(MR, mc - ip);
      const float* src = &A.at(i0 + ip, k0);
      if (rows == MR) {
        // The six rows side by side, k outermost: six sequential read streams and one sequential
        // write stream. 1-2.5 % faster over the forward and dL/dx products than a row at a time
        // with writes MR floats apart (interleaved A/B runs in one process).
        const int64_t rs = A.rs;
        for (int64_t k = 0; k < kc; ++k, dst += MR) {
          dst[0] = src[k];
          dst[1] = src[rs + k];
          dst[2] = src[2 * rs + k];
          dst[3] = src[3 * rs + k];
          dst[4] = src[4 * rs + k];
          dst[5] = src[5 * rs + k];
        }
      } else {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[r * A.rs + k];
      }
    }
  } else {  // columns contiguous along i (a transposed view such as dy.t()): a column at a time
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = &A.at(i0, k0 + k);
      for (int64_t ip = 0; ip < mc; ip += MR) {
        float* dst = pa + ip * kc + k * MR;
        const int64_t rows = std::min(MR, mc - ip);
        for (int64_t r = 0; r < rows; ++r) dst[r] = src[(ip + r) * A.rs];
      }
    }
  }
  if (const int64_t tail = mc % MR) {  // zero the last panel's missing rows
    float* dst = pa + (panels - 1) * MR * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r = tail; r < MR; ++r) dst[k * MR + r] = 0.0f;
  }
}

// B[k0 : k0+kc, j0 : j0+nc] into NR-column panels, k-major within a panel: pb[panel][k][c].
void pack_b(const View& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* pb) {
  const int64_t full = nc / NR * NR;
  if (B.cs == 1) {  // rows of B contiguous: one row at a time, NR floats (one cache line) per panel
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = &B.at(k0 + k, j0);
      for (int64_t jp = 0; jp < full; jp += NR)
        std::memcpy(pb + jp * kc + k * NR, src + jp, NR * sizeof(float));
    }
  } else {  // B is a transposed view (w.t()): walk each column of B along its contiguous k
    for (int64_t jp = 0; jp < full; jp += NR)
      for (int64_t c = 0; c < NR; ++c) {
        const float* src = &B.at(k0, j0 + jp + c);
        float* dst = pb + jp * kc + c;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR] = src[k * B.rs];
      }
  }
  if (full < nc) {  // the last, partial panel, zero-padded
    float* dst = pb + full * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t c = 0; c < NR; ++c)
        dst[k * NR + c] = full + c < nc ? B.at(k0 + k, j0 + full + c) : 0.0f;
  }
}

// A micro-kernel: the MR x NR tile c (row stride ldc) becomes acc when overwrite, else
// beta * c + acc, where acc = sum over k of pa[k][r] * pb[k][c].
using Kernel = void (*)(int64_t kc, const float* pa, const float* pb, float* c, int64_t ldc,
                        bool overwrite, float beta);

void kernel_portable(int64_t kc, const float* pa, const float* pb, float* c, int64_t ldc,
                     bool overwrite, float beta) {
  float acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k, pa += MR, pb += NR)
    for (int64_t r = 0; r < MR; ++r)
      for (int64_t j = 0; j < NR; ++j) acc[r][j] += pa[r] * pb[j];
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t j = 0; j < NR; ++j)
      c[r * ldc + j] = overwrite ? acc[r][j] : beta * c[r * ldc + j] + acc[r][j];
}

#ifdef SAMOUT_GEMM_X86
__attribute__((target("avx2,fma"))) void kernel_avx2(int64_t kc, const float* pa, const float* pb,
                                                       float* c, int64_t ldc, bool overwrite,
                                                       float beta) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(pb), b1 = _mm256_load_ps(pb + 8);
    __m256 a = _mm256_broadcast_ss(pa + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(pa + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(pa + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(pa + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30), c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(pa + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40), c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(pa + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50), c51 = _mm256_fmadd_ps(a, b1, c51);
    pa += MR;
    pb += NR;
  }
  // A macro, not a lambda: a lambda would not inherit this function's target("avx2,fma").
  const __m256 vb = _mm256_set1_ps(beta);
#define SAMOUT_STORE_ROW(r, lo, hi)                                  \
  do {                                                               \
    float* row = c + (r) * ldc;                                      \
    __m256 l = lo, h = hi;                                           \
    if (!overwrite) {                                                \
      l = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row), l);              \
      h = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row + 8), h);          \
    }                                                                \
    _mm256_storeu_ps(row, l);                                        \
    _mm256_storeu_ps(row + 8, h);                                    \
  } while (0)
  SAMOUT_STORE_ROW(0, c00, c01);
  SAMOUT_STORE_ROW(1, c10, c11);
  SAMOUT_STORE_ROW(2, c20, c21);
  SAMOUT_STORE_ROW(3, c30, c31);
  SAMOUT_STORE_ROW(4, c40, c41);
  SAMOUT_STORE_ROW(5, c50, c51);
#undef SAMOUT_STORE_ROW
}
#endif

Kernel pick_kernel() {
#ifdef SAMOUT_GEMM_X86
  if (cpu_has_avx2_fma()) return kernel_avx2;
#endif
  return kernel_portable;
}

const Kernel kKernel = pick_kernel();

// A packing buffer, grown on demand and reused across calls (OpenMP's pool threads live on).
struct AlignedFloats {
  float* p = nullptr;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      std::free(p);
      // 64-byte alignment for the micro-kernel's aligned loads; size rounded up as aligned_alloc needs.
      p = static_cast<float*>(std::aligned_alloc(64, (want * sizeof(float) + 63) / 64 * 64));
      TORCH_CHECK(p != nullptr, "gemm_cpu: out of memory for packing buffers");
      n = want;
    }
    return p;
  }
  ~AlignedFloats() { std::free(p); }
};

// C[m0:m1, jc:jc+nc] (+)= A[m0:m1, pc:pc+kc] @ (the packed KC x NC block pb of B), packing A
// into pa an MC x KC block at a time. The first K block applies beta (or overwrites C); later ones
// add to what it left.
void compute_block(const View& A, const float* pb, float* pa, float* C, int64_t ldc, int64_t m0,
                   int64_t m1, int64_t jc, int64_t nc, int64_t pc, int64_t kc, float beta) {
  const bool overwrite = pc == 0 && beta == 0.0f;
  const float b = pc == 0 ? beta : 1.0f;
  alignas(64) float edge[MR * NR];
  for (int64_t ic = m0; ic < m1; ic += MC) {
    const int64_t mc = std::min(MC, m1 - ic);
    pack_a(A, ic, mc, pc, kc, pa);
    for (int64_t jr = 0; jr < nc; jr += NR) {
      const int64_t nr = std::min(NR, nc - jr);
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int64_t mr = std::min(MR, mc - ir);
        float* c = C + (ic + ir) * ldc + jc + jr;
        const float* a = pa + ir * kc;
        const float* bp = pb + jr * kc;
        if (mr == MR && nr == NR) {
          kKernel(kc, a, bp, c, ldc, overwrite, b);
        } else {  // a partial tile: compute it whole into a scratch tile, then copy its part
          kKernel(kc, a, bp, edge, NR, /*overwrite=*/true, 0.0f);
          for (int64_t r = 0; r < mr; ++r)
            for (int64_t j = 0; j < nr; ++j) {
              float& dst = c[r * ldc + j];
              dst = overwrite ? edge[r * NR + j] : b * dst + edge[r * NR + j];
            }
        }
      }
    }
  }
}

// The whole product on `threads` threads (1 = the calling thread alone). Threads share each packed
// KC x NC block of B: they pack disjoint NR-panels of it, meet at a barrier, then each multiplies
// its own contiguous rows of C (whole register tiles) by the whole block, and meet again before the
// next block is packed over it (BLIS's parallel "ic loop"). Against a private copy of B per thread
// this packs B once instead of once per thread and halves the L3 it takes at 2 threads.
void gemm_threads(const View& A, const View& B, float* C, int64_t ldc, int64_t M, int64_t N,
                  int64_t K, float beta, int threads) {
  thread_local AlignedFloats shared_b;  // the calling thread's; the team reads and writes it
  float* const pb = shared_b.get(KC * NC);
  const int64_t row_tiles = (M + MR - 1) / MR;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t nt = 1, t = 0;
#endif
    thread_local AlignedFloats buf_a;
    float* const pa = buf_a.get(MC * KC);
    const int64_t m0 = std::min(M, row_tiles * t / nt * MR);
    const int64_t m1 = std::min(M, row_tiles * (t + 1) / nt * MR);
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t panels = (nc + NR - 1) / NR;
      const int64_t p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        if (p0 < p1)
          pack_b(B, pc, kc, jc + p0 * NR, std::min(nc, p1 * NR) - p0 * NR, pb + p0 * NR * kc);
#pragma omp barrier
        if (m0 < m1) compute_block(A, pb, pa, C, ldc, m0, m1, jc, nc, pc, kc, beta);
#pragma omp barrier
      }
    }
  }
}

}  // namespace

bool gemm_cpu_has_avx2() {
#ifdef SAMOUT_GEMM_X86
  return kKernel == kernel_avx2;
#else
  return false;
#endif
}

void gemm_cpu(const torch::Tensor& A, const torch::Tensor& B, torch::Tensor& C, float beta) {
  TORCH_CHECK(A.dim() == 2 && B.dim() == 2 && C.dim() == 2, "gemm_cpu: 2-D tensors only");
  TORCH_CHECK(A.scalar_type() == torch::kFloat32 && B.scalar_type() == torch::kFloat32 &&
                  C.scalar_type() == torch::kFloat32,
              "gemm_cpu: fp32 only");
  TORCH_CHECK(A.is_cpu() && B.is_cpu() && C.is_cpu(), "gemm_cpu: CPU tensors only");
  const int64_t M = A.size(0), K = A.size(1), N = B.size(1);
  TORCH_CHECK(B.size(0) == K && C.size(0) == M && C.size(1) == N, "gemm_cpu: shapes (", M, ", ",
              K, ") @ (", B.size(0), ", ", N, ") -> (", C.size(0), ", ", C.size(1), ") mismatch");
  TORCH_CHECK(N <= 1 || C.stride(1) == 1, "gemm_cpu: C must have unit stride along N");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = beta * C
    if (beta == 0.0f) C.zero_();
    else C.mul_(beta);
    return;
  }
  const View a{A.data_ptr<float>(), A.stride(0), A.stride(1)};
  const View b{B.data_ptr<float>(), B.stride(0), B.stride(1)};
  float* c = C.data_ptr<float>();
  const int64_t ldc = C.stride(0);

  // Small products, and calls from inside a parallel region, stay on the calling thread.
  const int64_t threads = at::get_num_threads();
  const bool small = static_cast<double>(M) * N * K < 64.0 * 64 * 64;
  const bool serial = threads <= 1 || small || at::in_parallel_region();
  gemm_threads(a, b, c, ldc, M, N, K, beta, serial ? 1 : static_cast<int>(threads));
}

}  // namespace samout::ops
