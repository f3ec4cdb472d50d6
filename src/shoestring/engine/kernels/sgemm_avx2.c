/* fp32 y = x W^T (+ bias) for the CPU decode step and prefill on AVX2+FMA hosts.
 *
 * Why by hand: on AVX2-only CPUs the kernels torch offers run a decode step's products (16
 * rows against a weight of thousands) far below the host's fp32 rate - oneDNN's prepacked
 * product, the fastest of them, at about 60% of it. This kernel streams each weight once per
 * product and keeps its panel in registers against all rows at once; benchmarks/linear_kernels.py
 * measures it against every torch kernel, docs/generate.md has the figures per host class.
 *
 * Layout: the weight [n, k] is packed once into panels of R = 6 output rows, interleaved along
 * k: wp[p][kk][r] = W[p*R + r][kk] (zero padded past n). One panel is 6 rows x k of the
 * weight, read start to end by one thread.
 *
 * Exactness: every output is one fp32 sum over k with fused multiply-adds, in another order than
 * MKL's or oneDNN's - within the rounding bound of any summation order, which is the policy the
 * Python side checks before this kernel is used (engine/packed_linear.py).
 *
 * Threads: OpenMP over panels, in the process's OpenMP runtime (torch's libgomp, by soname).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define R 6        /* weight rows per panel */
#define GROUP 8    /* panels one thread runs against every block of rows (a cache-sized group) */
#ifndef KCHUNK
#define KCHUNK 512      /* reduction chunk of long products (prefill, training) */
#endif
#define KCHUNK_MIN 1024 /* reductions up to this long run in one chunk */
#ifndef PF
#define PF 512 /* floats ahead of its reads a panel prefetches its weights (8 and 16 rows) */
#endif
#ifndef FEW
#define FEW 4      /* up to this many rows take the full-width path (panel_few), at most 4 */
#endif

/* Pack W [n, k] (row-major) into panels; wp holds ceil(n / R) * k * R floats. */
void sgemm_avx2_pack(const float* w, float* wp, int64_t n, int64_t k, int threads) {
  int64_t np = (n + R - 1) / R;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < np; p++) {
    float* dst = wp + p * k * R;
    int rows = n - p * R < R ? (int)(n - p * R) : R;
    const float* src = w + p * R * k;
    /* written in order (six rows read side by side): the copy runs at memory speed */
    for (int64_t kk = 0; kk < k; kk++, dst += R) {
      for (int r = 0; r < rows; r++) dst[r] = src[r * k + kk];
      for (int r = rows; r < R; r++) dst[r] = 0.0f;
    }
  }
}

/* The weights stream from memory once per product; the hardware prefetcher alone leaves the
 * decode step well short of the memory's read rate, so each panel asks for what it reads PF
 * floats ahead: 48 floats (8 steps of k, three cache lines) at a time. */
static inline void prefetch48(const float* p) {
  _mm_prefetch((const char*)p, _MM_HINT_T0);
  _mm_prefetch((const char*)(p + 16), _MM_HINT_T0);
  _mm_prefetch((const char*)(p + 32), _MM_HINT_T0);
}

/* A panel's six accumulators, one per weight row, to out[r * stride] */
static inline void store6(float* out, int stride, __m256 a0, __m256 a1, __m256 a2, __m256 a3,
                          __m256 a4, __m256 a5) {
  _mm256_store_ps(out + 0 * stride, a0);
  _mm256_store_ps(out + 1 * stride, a1);
  _mm256_store_ps(out + 2 * stride, a2);
  _mm256_store_ps(out + 3 * stride, a3);
  _mm256_store_ps(out + 4 * stride, a4);
  _mm256_store_ps(out + 5 * stride, a5);
}

/* 16 rows (x transposed: xt[kk][16]) against one panel -> out[r][16] */
static inline void panel16(const float* xt, const float* wp, int64_t k, float* out) {
  __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(),
         a11 = _mm256_setzero_ps(), a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(),
         a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a40 = _mm256_setzero_ps(),
         a41 = _mm256_setzero_ps(), a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    __m256 xa = _mm256_load_ps(xt + kk * 16), xb = _mm256_load_ps(xt + kk * 16 + 8);
    const float* w = wp + kk * R;
    if ((kk & 7) == 0) prefetch48(w + PF);
    __m256 b;
    b = _mm256_broadcast_ss(w + 0);
    a00 = _mm256_fmadd_ps(b, xa, a00);
    a01 = _mm256_fmadd_ps(b, xb, a01);
    b = _mm256_broadcast_ss(w + 1);
    a10 = _mm256_fmadd_ps(b, xa, a10);
    a11 = _mm256_fmadd_ps(b, xb, a11);
    b = _mm256_broadcast_ss(w + 2);
    a20 = _mm256_fmadd_ps(b, xa, a20);
    a21 = _mm256_fmadd_ps(b, xb, a21);
    b = _mm256_broadcast_ss(w + 3);
    a30 = _mm256_fmadd_ps(b, xa, a30);
    a31 = _mm256_fmadd_ps(b, xb, a31);
    b = _mm256_broadcast_ss(w + 4);
    a40 = _mm256_fmadd_ps(b, xa, a40);
    a41 = _mm256_fmadd_ps(b, xb, a41);
    b = _mm256_broadcast_ss(w + 5);
    a50 = _mm256_fmadd_ps(b, xa, a50);
    a51 = _mm256_fmadd_ps(b, xb, a51);
  }
  store6(out, 16, a00, a10, a20, a30, a40, a50);     /* rows 0-7 of each weight row */
  store6(out + 8, 16, a01, a11, a21, a31, a41, a51); /* rows 8-15 */
}

/* 8 rows (xt[kk][8]) against one panel -> out[r][8] */
static inline void panel8(const float* xt, const float* wp, int64_t k, float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    __m256 xa = _mm256_load_ps(xt + kk * 8);
    const float* w = wp + kk * R;
    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 0), xa, a0);
    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 1), xa, a1);
    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 2), xa, a2);
    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 3), xa, a3);
    a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 4), xa, a4);
    a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 5), xa, a5);
  }
  store6(out, 8, a0, a1, a2, a3, a4, a5);
}

/* 8 rows against two panels at once -> out0[r][8], out1[r][8]: twelve accumulators, as many as
 * panel16 keeps, hide the FMA latency that one panel's six leave exposed (each accumulator's
 * next FMA waits for its last; with six of them the two FMA units idle part of the time). */
static inline void panel8x2(const float* xt, const float* wp0, const float* wp1, int64_t k,
                            float* out0, float* out1) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(),
         c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(),
         c3 = _mm256_setzero_ps(), c4 = _mm256_setzero_ps(), c5 = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    __m256 xa = _mm256_load_ps(xt + kk * 8);
    const float* w = wp0 + kk * R;
    const float* v = wp1 + kk * R;
    if ((kk & 7) == 0) {
      prefetch48(w + PF);
      prefetch48(v + PF);
    }
    a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 0), xa, a0);
    c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + 0), xa, c0);
    a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 1), xa, a1);
    c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + 1), xa, c1);
    a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 2), xa, a2);
    c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + 2), xa, c2);
    a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 3), xa, a3);
    c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + 3), xa, c3);
    a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 4), xa, a4);
    c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + 4), xa, c4);
    a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 5), xa, a5);
    c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + 5), xa, c5);
  }
  store6(out0, 8, a0, a1, a2, a3, a4, a5);
  store6(out1, 8, c0, c1, c2, c3, c4, c5);
}

/* A few rows (M <= 4) against one panel, the weight read at full vector width: xe[i][kk*R + r]
 * = x[i][kk] (each row expanded to the panel's interleaving, xs floats apart), so 24 floats of
 * the panel (4 k's x 6 rows) meet 24 of each row's xe with three FMAs; lane f of the 24 belongs
 * to weight row f % 6. -> out[i][r] */
static inline __attribute__((always_inline)) void panel_few(const float* xe, int64_t xs,
                                                             const float* wp, int64_t k,
                                                             const int M, float* out) {
  __m256 acc[4][3];
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = acc[i][2] = _mm256_setzero_ps();
  int64_t n4 = (k / 4) * 4 * R, f = 0;
  for (; f < n4; f += 24) {
    __m256 w0 = _mm256_loadu_ps(wp + f), w1 = _mm256_loadu_ps(wp + f + 8),
           w2 = _mm256_loadu_ps(wp + f + 16);
    for (int i = 0; i < M; i++) {
      const float* e = xe + i * xs + f;
      acc[i][0] = _mm256_fmadd_ps(w0, _mm256_load_ps(e), acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(w1, _mm256_load_ps(e + 8), acc[i][1]);
      acc[i][2] = _mm256_fmadd_ps(w2, _mm256_load_ps(e + 16), acc[i][2]);
    }
  }
  for (int i = 0; i < M; i++) {
    float lanes[24] __attribute__((aligned(32)));
    _mm256_store_ps(lanes, acc[i][0]);
    _mm256_store_ps(lanes + 8, acc[i][1]);
    _mm256_store_ps(lanes + 16, acc[i][2]);
    float* o = out + i * R;
    for (int r = 0; r < R; r++) o[r] = lanes[r] + lanes[r + 6] + lanes[r + 12] + lanes[r + 18];
    for (int64_t g = f; g < k * R; g++) o[g % R] += wp[g] * xe[i * xs + g]; /* k % 4 tail */
  }
}

static void few_rows(const float* xe, int64_t xs, const float* wp, int64_t k, int m, float* out) {
  switch (m) { /* constant row counts: the accumulators stay in registers */
    case 1: panel_few(xe, xs, wp, k, 1, out); break;
    case 2: panel_few(xe, xs, wp, k, 2, out); break;
    case 3: panel_few(xe, xs, wp, k, 3, out); break;
    default: panel_few(xe, xs, wp, k, 4, out); break;
  }
}

/* y [m, n] = x [m, k] W^T + bias (bias may be NULL); rows of x and y contiguous. Returns 0, or
 * -1 when the scratch buffer cannot be allocated (nothing written to y). */
int sgemm_avx2_linear(const float* x, const float* wp, const float* bias, float* y, int64_t m,
                      int64_t n, int64_t k, int threads) {
  int64_t np = (n + R - 1) / R;
  if (m <= FEW) { /* a few rows: the weight streamed at full width (batch-1 decoding) */
    int64_t xs = ((k * R + 7) / 8) * 8; /* floats per expanded row, 32-byte aligned */
    float* xe = (float*)aligned_alloc(32, m * xs * 4);
    if (!xe) return -1;
    for (int64_t i = 0; i < m; i++)
      for (int64_t kk = 0; kk < k; kk++)
        for (int r = 0; r < R; r++) xe[i * xs + kk * R + r] = x[i * k + kk];
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t p = 0; p < np; p++) {
      float out[4 * R];
      few_rows(xe, xs, wp + p * k * R, k, (int)m, out);
      for (int64_t i = 0; i < m; i++)
        for (int r = 0; r < R && p * R + r < n; r++)
          y[i * n + p * R + r] = out[i * R + r] + (bias ? bias[p * R + r] : 0.0f);
    }
    free(xe);
    return 0;
  }
  /* rows in blocks of mb (8 for up to 8 rows, else 16), each block transposed: xt[blk][kk][mb] */
  int64_t mb = m <= 8 ? 8 : 16, blocks = (m + mb - 1) / mb;
  float* xt = (float*)aligned_alloc(32, ((blocks * k * mb * 4 + 31) / 32) * 32);
  if (!xt) return -1;
  /* transposed block by block in parallel (a prefill's x is megabytes); rows past m are 0 */
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; blk++) {
    float* d = xt + blk * k * mb;
    int64_t m0 = blk * mb, rows = m - m0 < mb ? m - m0 : mb;
    for (int64_t kk = 0; kk < k; kk++) {
      for (int64_t i = 0; i < rows; i++) d[kk * mb + i] = x[(m0 + i) * k + kk];
      for (int64_t i = rows; i < mb; i++) d[kk * mb + i] = 0.0f;
    }
  }
  int64_t groups = (np + GROUP - 1) / GROUP;
  /* several blocks of rows against long reductions: in chunks of k, so that a group's panels
   * and a block's rows, one chunk each, stay in cache; the chunks' partial sums add up in y, in
   * order. One block (a decode step) gains nothing from it and runs whole. */
  int64_t kc = k <= KCHUNK_MIN || blocks == 1 ? k : KCHUNK;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t g = 0; g < groups; g++) {
    float out[2 * R * 16] __attribute__((aligned(32)));
    int64_t p_end = (g + 1) * GROUP < np ? (g + 1) * GROUP : np;
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
      int64_t klen = k - k0 < kc ? k - k0 : kc;
      /* a group of panels stays in cache while every block of rows passes over it */
      for (int64_t blk = 0; blk < blocks; blk++) {
        const float* xb = xt + blk * k * mb + k0 * mb;
        int64_t m0 = blk * mb, rows = m - m0 < mb ? m - m0 : mb;
        /* 16 rows: one panel at a time; 8 rows: two (panel8x2), the group's odd last alone */
        for (int64_t p = g * GROUP; p < p_end; p += (mb == 8 && p + 1 < p_end) ? 2 : 1) {
          const float* wb = wp + p * k * R + k0 * R;
          int64_t panels = 1;
          if (mb == 16) {
            panel16(xb, wb, klen, out);
          } else if (p + 1 < p_end) {
            panel8x2(xb, wb, wb + k * R, klen, out, out + R * 8);
            panels = 2;
          } else {
            panel8(xb, wb, klen, out);
          }
          for (int r = 0; r < panels * R && p * R + r < n; r++) {
            int64_t o = p * R + r;
            float* yo = y + m0 * n + o;
            if (k0 == 0) {
              float b = bias ? bias[o] : 0.0f;
              for (int64_t i = 0; i < rows; i++) yo[i * n] = out[r * mb + i] + b;
            } else {
              for (int64_t i = 0; i < rows; i++) yo[i * n] += out[r * mb + i];
            }
          }
        }
      }
    }
  }
  free(xt);
  return 0;
}
