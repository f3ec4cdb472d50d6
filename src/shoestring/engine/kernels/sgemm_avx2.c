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
 * Weights stored in bf16 (compiled with -DWEIGHTS_BF16, every name prefixed sgemm_avx2_bf16_):
 * the same products for weights whose fp32 values are all bf16 values - the checkpoints most
 * models ship (Qwen2.5 among them), loaded in fp32 - from a packed copy of half the bytes. A
 * bf16 value is the top half of its fp32 bits, so widening it is exact, and every sum is the
 * fp32 build's, bit for bit, in the same order. A few rows (batch-1 decoding, bound by reading
 * the weights) widen each vector of weights as it is loaded; more rows widen a panel's chunk
 * once into a per-thread buffer and run the fp32 microkernels on it (widening a weight per
 * broadcast would cost an instruction next to every two multiply-adds).
 *
 * Threads: OpenMP over panels, in the process's OpenMP runtime (torch's libgomp, by soname).
 */
#include <immintrin.h>
#include <omp.h>
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
#ifndef PF_FEW
#define PF_FEW 1024 /* bytes ahead of its reads the few-row path prefetches its weights */
#endif
#ifndef FEW
#define FEW 4      /* up to this many rows take the full-width path (panel_few), at most 4 */
#endif

#ifdef WEIGHTS_BF16
typedef uint16_t wt; /* a weight as the packed copy stores it: the top half of its fp32 bits */
#define NAME(f) sgemm_avx2_bf16_##f
#else
typedef float wt;
#define NAME(f) sgemm_avx2_##f
#endif
#define STEP_BYTES (R * (int)sizeof(wt)) /* bytes of the packed copy per step of k */

/* Pack W [n, k] (row-major; for bf16, the bf16 weight's bits) into panels; wp holds
 * ceil(n / R) * k * R weights. */
void NAME(pack)(const wt* w, wt* wp, int64_t n, int64_t k, int threads) {
  int64_t np = (n + R - 1) / R;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < np; p++) {
    wt* dst = wp + p * k * R;
    int rows = n - p * R < R ? (int)(n - p * R) : R;
    const wt* src = w + p * R * k;
    /* written in order (six rows read side by side): the copy runs at memory speed */
    for (int64_t kk = 0; kk < k; kk++, dst += R) {
      for (int r = 0; r < rows; r++) dst[r] = src[r * k + kk];
      for (int r = rows; r < R; r++) dst[r] = 0;
    }
  }
}

/* The weights stream from memory once per product; the hardware prefetcher alone leaves the
 * decode step well short of the memory's read rate, so a panel's loop asks, every 8 steps of k,
 * for what it reads later: in fp32 its own weights at w (the step's) + PF floats, 48 floats
 * (three cache lines) at a time; in bf16, where it reads a widened copy in cache, the next
 * panel's packed weights at pf (NULL: none), 96 bytes at a time, which widen() then finds in
 * cache. */
static inline __attribute__((always_inline)) void prefetch_ahead(const float* w, const char* pf,
                                                                  int64_t kk) {
  if (kk & 7) return;
#ifdef WEIGHTS_BF16
  (void)w;
  if (!pf) return;
  _mm_prefetch(pf + kk * STEP_BYTES, _MM_HINT_T0);
  _mm_prefetch(pf + kk * STEP_BYTES + 64, _MM_HINT_T0);
#else
  (void)pf;
  _mm_prefetch((const char*)(w + PF), _MM_HINT_T0);
  _mm_prefetch((const char*)(w + PF + 16), _MM_HINT_T0);
  _mm_prefetch((const char*)(w + PF + 32), _MM_HINT_T0);
#endif
}

/* eight consecutive weights of a packed copy, as fp32 */
static inline __attribute__((always_inline)) __m256 weights8(const wt* w) {
#ifdef WEIGHTS_BF16
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
#else
  return _mm256_loadu_ps(w);
#endif
}

/* one weight of a packed copy, as fp32 */
static inline float weight_value(wt w) {
#ifdef WEIGHTS_BF16
  uint32_t bits = (uint32_t)w << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
#else
  return w;
#endif
}

#ifdef WEIGHTS_BF16
/* dst[0..n) = the fp32 values of src[0..n), the source prefetched 16 cache lines ahead (it
 * streams from memory) */
static void widen(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch((const char*)(src + i) + 1024, _MM_HINT_T0);
    _mm256_storeu_ps(dst + i, weights8(src + i));
    _mm256_storeu_ps(dst + i + 8, weights8(src + i + 8));
  }
  for (; i < n; i++) dst[i] = weight_value(src[i]);
}
#endif

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
static inline void panel16(const float* xt, const float* wp, int64_t k, float* out,
                           const char* pf) {
  __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(),
         a11 = _mm256_setzero_ps(), a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(),
         a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a40 = _mm256_setzero_ps(),
         a41 = _mm256_setzero_ps(), a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    __m256 xa = _mm256_load_ps(xt + kk * 16), xb = _mm256_load_ps(xt + kk * 16 + 8);
    const float* w = wp + kk * R;
    prefetch_ahead(w, pf, kk);
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
                            float* out0, float* out1, const char* pf0, const char* pf1) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(),
         c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(),
         c3 = _mm256_setzero_ps(), c4 = _mm256_setzero_ps(), c5 = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; kk++) {
    __m256 xa = _mm256_load_ps(xt + kk * 8);
    const float* w = wp0 + kk * R;
    const float* v = wp1 + kk * R;
    prefetch_ahead(w, pf0, kk);
    prefetch_ahead(v, pf1, kk);
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
                                                             const wt* wp, int64_t k,
                                                             const int M, float* lanes,
                                                             float* out) {
  /* rows past M are dead code (M is a constant after inlining) */
  __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a02 = _mm256_setzero_ps(),
         a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a12 = _mm256_setzero_ps(),
         a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a22 = _mm256_setzero_ps(),
         a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a32 = _mm256_setzero_ps();
  const float *e0 = xe, *e1 = xe + xs, *e2 = xe + 2 * xs, *e3 = xe + 3 * xs;
  int64_t n4 = (k / 4) * 4 * R, f = 0;
  for (; f < n4; f += 24) {
    /* PF_FEW bytes ahead, a line at a time: 24 weights are 1.5 lines in fp32, 0.75 in bf16 */
    _mm_prefetch((const char*)(wp + f) + PF_FEW, _MM_HINT_T0);
    if (sizeof(wt) == 4) _mm_prefetch((const char*)(wp + f) + PF_FEW + 64, _MM_HINT_T0);
    __m256 w0 = weights8(wp + f), w1 = weights8(wp + f + 8), w2 = weights8(wp + f + 16);
    a00 = _mm256_fmadd_ps(w0, _mm256_load_ps(e0 + f), a00);
    a01 = _mm256_fmadd_ps(w1, _mm256_load_ps(e0 + f + 8), a01);
    a02 = _mm256_fmadd_ps(w2, _mm256_load_ps(e0 + f + 16), a02);
    if (M > 1) {
      a10 = _mm256_fmadd_ps(w0, _mm256_load_ps(e1 + f), a10);
      a11 = _mm256_fmadd_ps(w1, _mm256_load_ps(e1 + f + 8), a11);
      a12 = _mm256_fmadd_ps(w2, _mm256_load_ps(e1 + f + 16), a12);
    }
    if (M > 2) {
      a20 = _mm256_fmadd_ps(w0, _mm256_load_ps(e2 + f), a20);
      a21 = _mm256_fmadd_ps(w1, _mm256_load_ps(e2 + f + 8), a21);
      a22 = _mm256_fmadd_ps(w2, _mm256_load_ps(e2 + f + 16), a22);
    }
    if (M > 3) {
      a30 = _mm256_fmadd_ps(w0, _mm256_load_ps(e3 + f), a30);
      a31 = _mm256_fmadd_ps(w1, _mm256_load_ps(e3 + f + 8), a31);
      a32 = _mm256_fmadd_ps(w2, _mm256_load_ps(e3 + f + 16), a32);
    }
  }
  store6(lanes, 8, a00, a01, a02, a10, a11, a12); /* rows 0-1, then 2-3 */
  store6(lanes + 48, 8, a20, a21, a22, a30, a31, a32);
  const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
  for (int i = 0; i < M; i++) {
    /* o[r] = ((l[r] + l[r + 6]) + l[r + 12]) + l[r + 18], six lanes at once (written with
     * intrinsics: GCC -O3's own vectorising of the scalar loop kept an accumulator of the
     * one-row loop above on the stack, a store and a load on every step's critical path) */
    const float* l = lanes + 24 * i;
    float* o = out + i * R;
    __m256 sum = _mm256_add_ps(_mm256_loadu_ps(l), _mm256_loadu_ps(l + 6));
    sum = _mm256_add_ps(_mm256_add_ps(sum, _mm256_loadu_ps(l + 12)), _mm256_loadu_ps(l + 18));
    _mm256_maskstore_ps(o, six, sum);
    for (int64_t g = f; g < k * R; g++) o[g % R] += weight_value(wp[g]) * xe[i * xs + g]; /* k % 4 tail */
  }
}

/* lanes: 104 floats of scratch, 32-byte aligned (the sums read 2 floats past the 96 stored) */
static void few_rows(const float* xe, int64_t xs, const wt* wp, int64_t k, int m, float* lanes,
                     float* out) {
  switch (m) { /* constant row counts: the accumulators stay in registers */
    case 1: panel_few(xe, xs, wp, k, 1, lanes, out); break;
    case 2: panel_few(xe, xs, wp, k, 2, lanes, out); break;
    case 3: panel_few(xe, xs, wp, k, 3, lanes, out); break;
    default: panel_few(xe, xs, wp, k, 4, lanes, out); break;
  }
}

/* y [m, n] = x [m, k] W^T + bias (bias may be NULL); rows of x and y contiguous. Returns 0, or
 * -1 when the scratch buffer cannot be allocated (nothing written to y). */
int NAME(linear)(const float* x, const wt* wp, const float* bias, float* y, int64_t m, int64_t n,
                 int64_t k, int threads) {
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
      float out[4 * R], lanes[4 * 24 + 8] __attribute__((aligned(32)));
      few_rows(xe, xs, wp + p * k * R, k, (int)m, lanes, out);
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
  float* widened = NULL; /* bf16: each thread's panels' chunk, widened to fp32 */
#ifdef WEIGHTS_BF16
  /* one block of rows (a decode step): a panel (two at 8 rows) at a time, just before its
   * products, as its weights arrive from memory; several (a prefill): the group's chunk once,
   * then every block passes over it */
  int64_t wide_panels = blocks == 1 ? 2 : GROUP;
  int64_t per_thread = ((wide_panels * kc * R + 7) / 8) * 8; /* floats, 32-byte multiples */
  widened = (float*)aligned_alloc(32, threads * per_thread * 4);
  if (!widened) {
    free(xt);
    return -1;
  }
#endif
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t g = 0; g < groups; g++) {
    float out[2 * R * 16] __attribute__((aligned(32)));
#ifdef WEIGHTS_BF16
    float* wide = widened + omp_get_thread_num() * per_thread;
#endif
    int64_t p_end = (g + 1) * GROUP < np ? (g + 1) * GROUP : np;
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
      int64_t klen = k - k0 < kc ? k - k0 : kc;
#ifdef WEIGHTS_BF16
      if (blocks > 1)
        for (int64_t q = g * GROUP; q < p_end; q++)
          widen(wp + q * k * R + k0 * R, wide + (q - g * GROUP) * klen * R, klen * R);
#endif
      /* a group of panels stays in cache while every block of rows passes over it */
      for (int64_t blk = 0; blk < blocks; blk++) {
        const float* xb = xt + blk * k * mb + k0 * mb;
        int64_t m0 = blk * mb, rows = m - m0 < mb ? m - m0 : mb;
        /* 16 rows: one panel at a time; 8 rows: two (panel8x2), the group's odd last alone */
        for (int64_t p = g * GROUP; p < p_end; p += (mb == 8 && p + 1 < p_end) ? 2 : 1) {
          const wt* wb = wp + p * k * R + k0 * R;
          int64_t panels = mb == 8 && p + 1 < p_end ? 2 : 1;
#ifdef WEIGHTS_BF16
          const float* w0 = wide + (blocks > 1 ? (p - g * GROUP) * klen * R : 0);
          const char *pf0 = NULL, *pf1 = NULL; /* the next panels, while these multiply */
          if (blocks == 1) {
            widen(wb, wide, klen * R);
            if (panels == 2) widen(wb + k * R, wide + klen * R, klen * R);
            if (p + panels < np) pf0 = (const char*)(wb + panels * k * R);
            if (panels == 2 && p + 3 < np) pf1 = (const char*)(wb + 3 * k * R);
          }
          const float* w1 = w0 + klen * R;
#else
          const float *w0 = wb, *w1 = wb + k * R;
          const char *pf0 = NULL, *pf1 = NULL; /* (fp32 prefetches from the panels' own) */
#endif
          if (mb == 16) {
            panel16(xb, w0, klen, out, pf0);
          } else if (panels == 2) {
            panel8x2(xb, w0, w1, klen, out, out + R * 8, pf0, pf1);
          } else {
            panel8(xb, w0, klen, out);
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
  free(widened);
  return 0;
}
