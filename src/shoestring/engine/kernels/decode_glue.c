/* The fp32 work of a decode step between its weight products, for Llama-family layers on a CPU:
 * RMSNorm with the residual add before it, RoPE + the KV-cache write + single-query attention,
 * and SiLU(gate) * up.
 *
 * Why by hand: at batch 1 a decode step of a 0.5B-class model spends about a fifth of its time
 * outside its products, in some forty small torch operations per layer (each a dispatch, an
 * allocation and a Python call around a few microseconds of arithmetic). These three functions
 * do the same arithmetic in three calls per layer. benchmarks/decode_profile.py times the step
 * with and without them; docs/generate.md has the figures per host class.
 *
 * Exactness: the same operations in the same order per element as the model's forward
 * (transformers' RMSNorm, rotate-half RoPE, softmax(q k^T * scale + mask) v, silu(g) * u);
 * sums run in another order and exp is a polynomial within a few ulp of the libm one, so
 * results agree within fp32 rounding - the policy engine/lean_decode.py's tests check.
 *
 * Threads: attention runs OpenMP over (row, kv head) pairs where a step has enough of them, in
 * the process's OpenMP runtime (torch's libgomp, by soname); the rest is per-row work too small
 * to split.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

#define MAX_HEAD_DIM 256
#define MAX_GROUP 64 /* query heads per kv head */
/* multiply-adds of one step's attention below which it runs on one thread */
#define PARALLEL_MIN_WORK 32768

/* e^x for 8 floats (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in r, times 2^n);
 * within 2 ulp over the range where e^x is a normal float; 0 below it (as e^-inf is 0). */
static inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365447504f); /* e^lo: the smallest normal float */
  __m256 live = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);    /* false for -inf and NaN-free underflow */
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  /* r = x - n ln2, ln2 split in two so that n * (its first part) is exact */
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), live);
}

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* For each of `rows` rows of width `dim`: h += delta where delta is given (the residual add),
 * then out = w * (h / sqrt(mean(h^2) + eps)) - transformers' RMSNorm. */
void glue_add_rmsnorm(float* h, const float* delta, const float* w, float* out, int64_t rows,
                      int64_t dim, float eps) {
  const int64_t vec = dim - dim % 8; /* the rest one element at a time */
  for (int64_t r = 0; r < rows; r++) {
    float* x = h + r * dim;
    const float* dr = delta ? delta + r * dim : NULL;
    __m256 ss = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec; i += 8) {
      __m256 v = _mm256_loadu_ps(x + i);
      if (dr) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(dr + i));
        _mm256_storeu_ps(x + i, v);
      }
      ss = _mm256_fmadd_ps(v, v, ss);
    }
    float sum = hsum8(ss);
    for (int64_t i = vec; i < dim; i++) {
      if (dr) x[i] += dr[i];
      sum += x[i] * x[i];
    }
    float inv = 1.0f / sqrtf(sum / (float)dim + eps);
    __m256 vinv = _mm256_set1_ps(inv);
    for (int64_t i = 0; i < vec; i += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv);
      _mm256_storeu_ps(out + r * dim + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), v));
    }
    for (int64_t i = vec; i < dim; i++) out[r * dim + i] = w[i] * (x[i] * inv);
  }
}

/* silu(x) * u for 8 lanes: x / (1 + e^-x) * u */
static inline __m256 silu_mul8(__m256 x, __m256 u) {
  __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

/* out[r] = silu(gate[r]) * up[r] for each row of `width` (rows gs and us floats apart): the
 * fused gate/up product's two halves, or two products' outputs. */
void glue_silu_mul(const float* gate, int64_t gs, const float* up, int64_t us, float* out,
                   int64_t rows, int64_t width) {
  const int64_t vec = width - width % 8;
  for (int64_t r = 0; r < rows; r++) {
    const float* g = gate + r * gs;
    const float* u = up + r * us;
    float* o = out + r * width;
    for (int64_t i = 0; i < vec; i += 8)
      _mm256_storeu_ps(o + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (vec < width) { /* the tail, through the same exp */
      float gt[8] = {0}, ut[8] = {0}, ot[8];
      for (int64_t i = vec; i < width; i++) gt[i - vec] = g[i], ut[i - vec] = u[i];
      _mm256_storeu_ps(ot, silu_mul8(_mm256_loadu_ps(gt), _mm256_loadu_ps(ut)));
      for (int64_t i = vec; i < width; i++) o[i] = ot[i - vec];
    }
  }
}

/* x rotated by rotate-half RoPE into y: y = x * cos + rotate_half(x) * sin, where
 * rotate_half(x) = [-x2, x1] for the halves x1, x2 of a head (d a multiple of 8). */
static inline void rope(const float* x, const float* cos, const float* sin, float* y, int64_t d) {
  int64_t half = d / 2;
  if (half % 8) { /* narrow heads: one element at a time, the same operations */
    for (int64_t i = 0; i < half; i++) {
      y[i] = x[i] * cos[i] - x[half + i] * sin[i];
      y[half + i] = x[half + i] * cos[half + i] + x[i] * sin[half + i];
    }
    return;
  }
  for (int64_t i = 0; i < half; i += 8) {
    __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + half + i);
    __m256 a = _mm256_mul_ps(x1, _mm256_loadu_ps(cos + i));
    __m256 b = _mm256_mul_ps(x2, _mm256_loadu_ps(sin + i));
    _mm256_storeu_ps(y + i, _mm256_sub_ps(a, b));
    __m256 c = _mm256_mul_ps(x2, _mm256_loadu_ps(cos + half + i));
    __m256 e = _mm256_mul_ps(x1, _mm256_loadu_ps(sin + half + i));
    _mm256_storeu_ps(y + half + i, _mm256_add_ps(c, e));
  }
}

/* One decode step's attention, every row and head. q [rows, hq d], k and v [rows, hkv d] hold
 * this token's heads (biases added; rows qs, ks, vs floats apart: the fused q/k/v product's
 * columns, or three products' outputs); cos, sin [rows, d]. Each row's k (rotated) and v are
 * written into the cache at column t (k at kc + row * ks0 + head * ks1 + t * d, v likewise
 * with vs0, vs1), then each query head attends over columns 0..t of its kv head (query head i
 * reads kv head i / (hq / hkv)) with scores q.k * scale + bias (bias [rows, t + 1]: 0 or
 * -inf); out [rows, hq d]. scratch: threads * (hq / hkv) * (t + 1) floats. */
void glue_attend(const float* q_in, int64_t qs, const float* k_in, int64_t ks,
                 const float* v_in, int64_t vs, const float* cos, const float* sin, float* kc,
                 int64_t ks0,
                 int64_t ks1, float* vc, int64_t vs0, int64_t vs1, int64_t t, const float* bias,
                 float* out, float* scratch, int64_t rows, int64_t hq, int64_t hkv, int64_t d,
                 float scale, int threads) {
  const int64_t g = hq / hkv, n = t + 1;
  const int64_t work = rows * hq * n * d;
#pragma omp parallel for schedule(static) num_threads(threads) if (work >= PARALLEL_MIN_WORK)
  for (int64_t item = 0; item < rows * hkv; item++) {
    const int64_t r = item / hkv, kvh = item % hkv;
    const float* cr = cos + r * d;
    const float* sr = sin + r * d;
    float* kh = kc + r * ks0 + kvh * ks1;
    float* vh = vc + r * vs0 + kvh * vs1;
    rope(k_in + r * ks + kvh * d, cr, sr, kh + t * d, d); /* this token's key, rotated, cached */
    const float* v = v_in + r * vs + kvh * d;
    for (int64_t i = 0; i < d; i++) vh[t * d + i] = v[i];
    float q[MAX_GROUP][MAX_HEAD_DIM] __attribute__((aligned(32)));
    for (int64_t j = 0; j < g; j++) rope(q_in + r * qs + (kvh * g + j) * d, cr, sr, q[j], d);
    float* s = scratch + (int64_t)omp_get_thread_num() * g * n; /* [g][n] scores */
    const float* b = bias + r * n;
    for (int64_t p = 0; p < n; p++) { /* each cached key once, against the group's queries */
      const float* k = kh + p * d;
      for (int64_t j = 0; j < g; j++) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < d; i += 8)
          acc = _mm256_fmadd_ps(_mm256_load_ps(q[j] + i), _mm256_loadu_ps(k + i), acc);
        s[j * n + p] = hsum8(acc) * scale + b[p];
      }
    }
    for (int64_t j = 0; j < g; j++) { /* softmax of each query head's scores */
      float* sj = s + j * n;
      float mx = -INFINITY;
      for (int64_t p = 0; p < n; p++) mx = sj[p] > mx ? sj[p] : mx;
      __m256 vmx = _mm256_set1_ps(mx), sum = _mm256_setzero_ps();
      int64_t p = 0;
      for (; p + 8 <= n; p += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sj + p), vmx));
        _mm256_storeu_ps(sj + p, e);
        sum = _mm256_add_ps(sum, e);
      }
      float total = hsum8(sum);
      if (p < n) { /* the tail, through the same exp */
        float tail[8] __attribute__((aligned(32))) = {0};
        for (int64_t i = p; i < n; i++) tail[i - p] = sj[i];
        __m256 e = exp8(_mm256_sub_ps(_mm256_load_ps(tail), vmx));
        _mm256_store_ps(tail, e);
        for (int64_t i = p; i < n; i++) {
          sj[i] = tail[i - p];
          total += tail[i - p];
        }
      }
      float inv = 1.0f / total;
      for (int64_t i = 0; i < n; i++) sj[i] *= inv;
    }
    /* out = probabilities . values, each cached value once against the group's heads */
    float* o = out + r * hq * d + kvh * g * d; /* the group's heads, adjacent: [g][d] */
    for (int64_t i = 0; i < g * d; i++) o[i] = 0.0f;
    for (int64_t p = 0; p < n; p++) {
      const float* vp = vh + p * d;
      for (int64_t j = 0; j < g; j++) {
        __m256 pj = _mm256_set1_ps(s[j * n + p]);
        for (int64_t i = 0; i < d; i += 8)
          _mm256_storeu_ps(o + j * d + i,
                           _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp + i), _mm256_loadu_ps(o + j * d + i)));
      }
    }
  }
}
