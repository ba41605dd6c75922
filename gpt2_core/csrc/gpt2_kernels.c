/*
 * gpt2_zoo CPU kernels: fp32 matrix x few-rows products for single-token decoding, the whole
 * single-token step (gpt2_decode_step) and the whole prompt (gpt2_prefill, a small GEMM).
 *
 * Decoding one token reads every weight once and does two flops per weight, so it is bound by
 * memory bandwidth. On the 2-core AMD EPYC this project is measured on, MKL's GEMV for one row
 * streams about 15 GB/s; these loops stream 24-28 GB/s with two threads (the machine peaks
 * near 34 GB/s). They are plain C with GCC/Clang vector extensions (compiled with
 * -march=native, so AVX-512, AVX2 or NEON as the machine has) and OpenMP, built at first use by
 * gpt2_core/cpu_kernels.py and called through ctypes by the torch and TF backends. Under torch
 * the OpenMP runtime is torch's own (same soname, already loaded), so these threads are torch's
 * intra-op threads.
 *
 * Two layouts, both reading each weight exactly once for all M rows of X:
 *   kn: Y = bias + X @ W   with W (K, N) row-major  (GPT-2 Conv1D, (in, out))
 *   nk: Y = X @ W^T        with W (N, K) row-major  (nn.Linear / the tied LM head, (V, C))
 * W may also be bfloat16 (`wq == WQ_BF16`): half the bytes to stream, so up to twice the tokens/s.
 * Each bf16 weight is widened to fp32 in registers (a zero-extend and a 16-bit shift: exact)
 * and multiplied by fp32 activations with fp32 accumulation, so the only rounding beyond the
 * fp32 kernel's is the weights' own. (AVX512-BF16's vdpbf16ps would also round the activations
 * to bf16; the widening costs two cheap instructions per 16 weights and the loop stays bound
 * by memory, so it is not needed for speed.)
 * W may also be int8 (`wq == WQ_INT8`) with one fp32 scale per output channel (per column of a
 * kn W, per row of an nk W): a quarter of the bytes. Each int8 is widened to fp32 in registers
 * (sign-extend, convert: exact), the sums of x * q run in fp32 and the channel's scale is applied
 * once to the finished sum, so the result is exactly the fp32 product with the dequantized weight
 * q * s up to fp32 summation order. Activations stay fp32 (weight-only quantization).
 * No bounds checks here: the Python wrapper checks shapes, dtypes and contiguity.
 */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define VL 16

/* weight kinds (the `wq` argument) */
enum { WQ_F32 = 0, WQ_BF16 = 1, WQ_INT8 = 2 };

#ifdef _OPENMP
#define BARRIER _Pragma("omp barrier")
/* this thread's index t and the team size T, inside a parallel region */
#define TEAM_ID const int t = omp_get_thread_num(), T = omp_get_num_threads()
#else
#define BARRIER
#define TEAM_ID const int t = 0, T = 1
#endif
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4))); /* unaligned access */

static inline vf ld(const float *p) { return *(const vfu *)p; }
static inline void st(float *p, vf v) { *(vfu *)p = v; }

/* bfloat16 is the top half of an fp32: widening is exact (zero-extend, shift left by 16) */
static inline float bf(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/*
 * Decoding GEMVs (one row of X) read a few rows of W per pass over Y, and prefetch the next
 * block of rows (contiguous in memory) spread over the pass: `pf_begin` when a pass starts
 * (`bytes` 0 for the last pass), `pf_step` once per vector step. On the AMD EPYCs this is
 * measured on, the hardware prefetcher alone leaves W's short rows (GPT-2 small's are 0.75-12
 * KB) mostly unfetched when the pass reaches them. Measured with benchmarks/gemv_bandwidth.c
 * (2 threads, AVX-512 and AVX2 builds): four rows per pass with the next four prefetched into
 * L2 streams 1.04-1.46x (fp32), 1.14-1.71x (bf16) and, for rows of 1.5 KB and more, 1.1-1.4x
 * (int8) faster than eight rows with no prefetch or with an L1 prefetch; int8's shorter rows
 * (GPT-2 small's 768 B) stream best eight at a time with the next eight prefetched into L1.
 */
typedef struct {
    const char *p;
    int64_t lines, per, line;
} pf_t;
static inline pf_t pf_begin(const void *next, int64_t bytes, int64_t steps) {
    pf_t f = {(const char *)next, bytes / 64, 0, 0};
    f.per = steps > 0 ? (f.lines + steps - 1) / steps : 0;
    return f;
}
static inline __attribute__((always_inline)) void pf_step(pf_t *f, int l1) {
    for (int64_t j = 0; j < f->per && f->line < f->lines; ++j, ++f->line) {
        if (l1) __builtin_prefetch(f->p + f->line * 64, 0, 3);
        else __builtin_prefetch(f->p + f->line * 64, 0, 1);
    }
}

/* The decoding pass of kn_rows, kn_rows_bf16 and kn_rows_i8 (one row of X; uses their k, k1,
   X, W, Y, N): four rows of W per pass over Y, the next four prefetched into L2. `Wt` is the
   weight type, `vt` / `LDY` / `STY` the vector type and its load and store of Y, `LDW` the
   widening load of `WIDTH` weights, `SCALAR` one weight as a float (the ragged columns). */
#define KN_DECODE_FOUR_ROWS(Wt, vt, LDY, STY, LDW, WIDTH, SCALAR)                                 \
    for (; k + 4 <= k1; k += 4) {                                                                 \
        const Wt *w = W + k * N;                                                                  \
        const vt x0 = (vt){0} + X[k], x1 = (vt){0} + X[k + 1], x2 = (vt){0} + X[k + 2],           \
                 x3 = (vt){0} + X[k + 3];                                                         \
        const int64_t Nw = N / (WIDTH) * (WIDTH);                                                 \
        pf_t pf = pf_begin(w + 4 * N, k + 8 <= k1 ? 4 * N * (int64_t)sizeof(Wt) : 0, N / (WIDTH)); \
        for (int64_t n = 0; n < Nw; n += (WIDTH)) {                                               \
            pf_step(&pf, 0);                                                                      \
            vt a0 = LDY(Y + n) + x0 * LDW(w + n), a1 = x1 * LDW(w + N + n);                       \
            a0 += x2 * LDW(w + 2 * N + n);                                                        \
            a1 += x3 * LDW(w + 3 * N + n);                                                        \
            STY(Y + n, a0 + a1);                                                                  \
        }                                                                                         \
        for (int64_t n = Nw; n < N; ++n)                                                          \
            for (int i = 0; i < 4; ++i) Y[n] += X[k + i] * SCALAR(w[i * N + n]);                  \
    }
#define AS_FLOAT(v) ((float)(v))

/* Y[m, :] += sum_{k0 <= k < k1} X[m, k] * W[k, :]; streams rows k0..k1 of W contiguously,
   several rows of W per pass, their broadcast x values hoisted out of the column loop. */
#define KN_MB 8 /* rows of X per pass over a block of W */
static void kn_rows(const float *restrict X, int64_t ldx, const float *restrict W,
                    float *restrict Y, int64_t ldy, int64_t M, int64_t k0, int64_t k1,
                    int64_t N) {
    const int64_t Nv = N / VL * VL;
    int64_t k = k0;
    if (M == 1) /* the decoding case: four rows of W per pass over Y, the next four prefetched */
        KN_DECODE_FOUR_ROWS(float, vf, ld, st, ld, VL, AS_FLOAT)
    for (; k + 4 <= k1; k += 4) {
        const float *w0 = W + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
        for (int64_t mb = 0; mb < M; mb += KN_MB) {
            const int64_t me = mb + KN_MB < M ? mb + KN_MB : M;
            vf xb[KN_MB][4];
            for (int64_t m = mb; m < me; ++m)
                for (int i = 0; i < 4; ++i) xb[m - mb][i] = (vf){0} + X[m * ldx + k + i];
            for (int64_t n = 0; n < Nv; n += VL) {
                const vf a = ld(w0 + n), b = ld(w1 + n), c = ld(w2 + n), d = ld(w3 + n);
                for (int64_t m = mb; m < me; ++m) {
                    float *y = Y + m * ldy + n;
                    const vf *xv = xb[m - mb];
                    st(y, ld(y) + xv[0] * a + xv[1] * b + xv[2] * c + xv[3] * d);
                }
            }
        }
        for (int64_t n = Nv; n < N; ++n)
            for (int64_t m = 0; m < M; ++m) {
                const float *x = X + m * ldx + k;
                Y[m * ldy + n] += x[0] * w0[n] + x[1] * w1[n] + x[2] * w2[n] + x[3] * w3[n];
            }
    }
    for (; k < k1; ++k)
        for (int64_t m = 0; m < M; ++m) {
            const float xk = X[m * ldx + k];
            const float *w = W + k * N;
            float *y = Y + m * ldy;
            for (int64_t n = 0; n < N; ++n) y[n] += xk * w[n];
        }
}

/* kn_rows for a bfloat16 W. The widening needs registers, so these loops use the machine's
   own vector width (16 floats with AVX-512, else 8): with 16-float vectors split over AVX2's
   8-float registers, eight rows in flight spill and the loop turns compute-bound. */
#if defined(__AVX512F__)
#define NW 16
#else
#define NW 8
#endif
typedef float vn __attribute__((vector_size(NW * 4)));
typedef float vnu __attribute__((vector_size(NW * 4), aligned(4)));
typedef uint16_t vnh __attribute__((vector_size(NW * 2), aligned(2)));
typedef uint32_t vn32 __attribute__((vector_size(NW * 4)));
static inline vn ldn(const float *p) { return *(const vnu *)p; }
static inline void stn(float *p, vn v) { *(vnu *)p = v; }
/* the widening as one zero-extending load and a shift (GCC's generic convertvector for AVX2
   splits it into 128-bit halves and shuffles: three times the port-5 work, compute-bound) */
static inline vn ldnh(const uint16_t *p) {
#if defined(__AVX512F__)
    return (vn)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif defined(__AVX2__)
    return (vn)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    return (vn)(__builtin_convertvector(*(const vnh *)p, vn32) << 16);
#endif
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/* 16 bf16 weights widened without a shuffle: each 32-bit lane of one load holds elements 2i
   (low half) and 2i+1 (high half), so a shift gives the even ones and a mask the odd ones.
   (The zero-extending load of ldnh is a shuffle-port instruction per 8 weights; on AVX2 that
   port, not memory, limited the bf16 GEMV to ~24 GB/s where fp32 streams 28.) */
#define BF16_PAIRS 1
static inline void ldh16(const uint16_t *p, __m256 *even, __m256 *odd) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
}
#endif

static void kn_rows_bf16(const float *restrict X, int64_t ldx, const uint16_t *restrict W,
                         float *restrict Y, int64_t ldy, int64_t M, int64_t k0, int64_t k1,
                         int64_t N) {
    const int64_t Nv = N / NW * NW;
    int64_t k = k0;
#ifdef BF16_PAIRS
    if (M == 1) { /* decoding: four rows of W, 16 columns (even and odd) per step */
        const int64_t N16 = N / 16 * 16;
        for (; k + 4 <= k1; k += 4) {
            const uint16_t *w = W + k * N;
            __m256 xv[4];
            for (int i = 0; i < 4; ++i) xv[i] = _mm256_set1_ps(X[k + i]);
            pf_t pf = pf_begin(w + 4 * N, k + 8 <= k1 ? 4 * N * 2 : 0, N16 / 16);
            for (int64_t n = 0; n < N16; n += 16) {
                __m256 e, o, se, so;
                pf_step(&pf, 0);
                ldh16(w + n, &e, &o);
                se = _mm256_mul_ps(xv[0], e);
                so = _mm256_mul_ps(xv[0], o);
                for (int i = 1; i < 4; ++i) {
                    ldh16(w + i * N + n, &e, &o);
                    se = _mm256_fmadd_ps(xv[i], e, se);
                    so = _mm256_fmadd_ps(xv[i], o, so);
                }
                /* back to column order: [c0 c2 .. c14] and [c1 c3 .. c15] interleaved */
                const __m256 lo = _mm256_unpacklo_ps(se, so), hi = _mm256_unpackhi_ps(se, so);
                _mm256_storeu_ps(Y + n, _mm256_add_ps(_mm256_loadu_ps(Y + n),
                                                      _mm256_permute2f128_ps(lo, hi, 0x20)));
                _mm256_storeu_ps(Y + n + 8, _mm256_add_ps(_mm256_loadu_ps(Y + n + 8),
                                                          _mm256_permute2f128_ps(lo, hi, 0x31)));
            }
            for (int64_t n = N16; n < N; ++n)
                for (int i = 0; i < 4; ++i) Y[n] += X[k + i] * bf(w[i * N + n]);
        }
    }
#endif
    if (M == 1) /* the decoding case: four rows of W per pass over Y, the next four prefetched */
        KN_DECODE_FOUR_ROWS(uint16_t, vn, ldn, stn, ldnh, NW, bf)
    for (; k + 4 <= k1; k += 4) {
        const uint16_t *w0 = W + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
        for (int64_t m = 0; m < M; ++m) {
            const float *x = X + m * ldx + k;
            const vn x0 = (vn){0} + x[0], x1 = (vn){0} + x[1], x2 = (vn){0} + x[2],
                     x3 = (vn){0} + x[3];
            float *y = Y + m * ldy;
            for (int64_t n = 0; n < Nv; n += NW)
                stn(y + n, ldn(y + n) + x0 * ldnh(w0 + n) + x1 * ldnh(w1 + n) +
                               x2 * ldnh(w2 + n) + x3 * ldnh(w3 + n));
            for (int64_t n = Nv; n < N; ++n)
                y[n] += x[0] * bf(w0[n]) + x[1] * bf(w1[n]) + x[2] * bf(w2[n]) + x[3] * bf(w3[n]);
        }
    }
    for (; k < k1; ++k)
        for (int64_t m = 0; m < M; ++m) {
            const float xk = X[m * ldx + k];
            const uint16_t *w = W + k * N;
            float *y = Y + m * ldy;
            for (int64_t n = 0; n < N; ++n) y[n] += xk * bf(w[n]);
        }
}

/* eight (sixteen) int8 weights widened to fp32: one sign-extending load and a convert */
static inline vn ldn8(const int8_t *p) {
#if defined(__AVX512F__)
    return (vn)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
    return (vn)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    typedef int8_t vn8 __attribute__((vector_size(NW), aligned(1)));
    return __builtin_convertvector(*(const vn8 *)p, vn);
#endif
}

/* kn_rows for an int8 W: Y += X @ Q, unscaled (the caller applies the column scales). */
static void kn_rows_i8(const float *restrict X, int64_t ldx, const int8_t *restrict W,
                       float *restrict Y, int64_t ldy, int64_t M, int64_t k0, int64_t k1,
                       int64_t N) {
    const int64_t Nv = N / NW * NW;
    int64_t k = k0;
    if (M == 1 && N < 1536) /* decoding, short rows: eight per pass, the next eight into L1 */
        for (; k + 8 <= k1; k += 8) {
            const int8_t *w = W + k * N;
            vn xv[8];
            for (int i = 0; i < 8; ++i) xv[i] = (vn){0} + X[k + i];
            pf_t pf = pf_begin(w + 8 * N, k + 16 <= k1 ? 8 * N : 0, Nv / NW);
            for (int64_t n = 0; n < Nv; n += NW) {
                pf_step(&pf, 1);
                vn acc = ldn(Y + n) + xv[0] * ldn8(w + n) + xv[1] * ldn8(w + N + n);
                acc += xv[2] * ldn8(w + 2 * N + n) + xv[3] * ldn8(w + 3 * N + n);
                acc += xv[4] * ldn8(w + 4 * N + n) + xv[5] * ldn8(w + 5 * N + n);
                acc += xv[6] * ldn8(w + 6 * N + n) + xv[7] * ldn8(w + 7 * N + n);
                stn(Y + n, acc);
            }
            for (int64_t n = Nv; n < N; ++n)
                for (int i = 0; i < 8; ++i) Y[n] += X[k + i] * (float)w[i * N + n];
        }
    if (M == 1) /* decoding: four rows per pass, the next four into L2 */
        KN_DECODE_FOUR_ROWS(int8_t, vn, ldn, stn, ldn8, NW, AS_FLOAT)
    for (; k + 4 <= k1; k += 4) {
        const int8_t *w0 = W + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
        for (int64_t m = 0; m < M; ++m) {
            const float *x = X + m * ldx + k;
            const vn x0 = (vn){0} + x[0], x1 = (vn){0} + x[1], x2 = (vn){0} + x[2],
                     x3 = (vn){0} + x[3];
            float *y = Y + m * ldy;
            for (int64_t n = 0; n < Nv; n += NW)
                stn(y + n, ldn(y + n) + x0 * ldn8(w0 + n) + x1 * ldn8(w1 + n) +
                               x2 * ldn8(w2 + n) + x3 * ldn8(w3 + n));
            for (int64_t n = Nv; n < N; ++n)
                y[n] += x[0] * (float)w0[n] + x[1] * (float)w1[n] + x[2] * (float)w2[n] +
                        x[3] * (float)w3[n];
        }
    }
    for (; k < k1; ++k)
        for (int64_t m = 0; m < M; ++m) {
            const float xk = X[m * ldx + k];
            const int8_t *w = W + k * N;
            float *y = Y + m * ldy;
            for (int64_t n = 0; n < N; ++n) y[n] += xk * (float)w[n];
        }
}

static void kn_rows_any(const float *X, int64_t ldx, const void *W, int wq, float *Y,
                        int64_t ldy, int64_t M, int64_t k0, int64_t k1, int64_t N) {
    if (wq == WQ_INT8) kn_rows_i8(X, ldx, W, Y, ldy, M, k0, k1, N);
    else if (wq == WQ_BF16) kn_rows_bf16(X, ldx, W, Y, ldy, M, k0, k1, N);
    else kn_rows(X, ldx, W, Y, ldy, M, k0, k1, N);
}

static void kn_init(const float *bias, float *Y, int64_t ldy, int64_t M, int64_t N) {
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) Y[m * ldy + n] = bias ? bias[n] : 0.f;
}

enum { ACT_GELU_TANH = 0, ACT_GELU_ERF, ACT_RELU, ACT_QUICK_GELU, ACT_SILU, ACT_TANH,
       ACT_SIGMOID, ACT_LINEAR };

static inline float activate(float x, int act) {
    switch (act) {
    case ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case ACT_RELU: return x > 0.f ? x : 0.f;
    case ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    case ACT_SILU: return x / (1.0f + expf(-x));
    case ACT_TANH: return tanhf(x);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    default: return x;
    }
}

/*
 * Inside a team of T threads: Y = act(bias + X (M, K) @ W (K, N)), or, with `resid`,
 * resid += bias + X @ W (then Y is scratch). Thread t streams rows [t*K/T, (t+1)*K/T) of W into
 * its own partial (thread 0 into Y, the others into `part`, (T - 1) * M * N floats), then after
 * a barrier each thread reduces a block of columns. Row strides: X ldx, Y and resid ldy.
 * An int8 W (`wscale`, N column scales) sums X @ Q and scales each column's total, then adds
 * the bias.
 */
static void kn_team(const float *X, int64_t ldx, const void *W, int wq, const float *wscale,
                    const float *bias, float *Y, int64_t ldy, float *part, float *resid, int act,
                    int64_t M, int64_t K, int64_t N, int t, int T) {
    const int64_t chunk = (K + T - 1) / T;
    int64_t k0 = t * chunk, k1 = k0 + chunk;
    if (k1 > K) k1 = K;
    float *acc = t == 0 ? Y : part + (int64_t)(t - 1) * M * N;
    const int64_t lda = t == 0 ? ldy : N;
    kn_init(t == 0 && !wscale ? bias : 0, acc, lda, M, N);
    if (k0 < k1) kn_rows_any(X, ldx, W, wq, acc, lda, M, k0, k1, N);
    BARRIER
    const int64_t c = ((N + T - 1) / T + VL - 1) / VL * VL;
    int64_t n0 = t * c, n1 = n0 + c;
    if (n1 > N) n1 = N;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n1; ++n) {
            float y = Y[m * ldy + n];
            for (int j = 1; j < T; ++j) y += part[(int64_t)(j - 1) * M * N + m * N + n];
            if (wscale) y = y * wscale[n] + (bias ? bias[n] : 0.f);
            if (resid) resid[m * ldy + n] += y;
            else Y[m * ldy + n] = activate(y, act);
        }
    BARRIER
}

/*
 * Y (M, N) = bias + X (M, K) @ W (K, N). With nt > 1 the K rows are split into nt contiguous
 * blocks (each thread streams one block of W), the partial sums of threads 1.. go to `scratch`
 * ((nt - 1) * M * N floats), and are added into Y after a barrier. `wq` is the weight kind;
 * an int8 W takes its N column scales in `wscale`.
 */
void gpt2_gemv_kn(const float *X, int64_t ldx, const void *W, int wq, const float *wscale,
                  const float *bias, float *Y, int64_t ldy, int64_t M, int64_t K, int64_t N,
                  float *scratch, int nt) {
    if (wq != WQ_INT8) wscale = 0;
    if (nt <= 1) {
        kn_init(wscale ? 0 : bias, Y, ldy, M, N);
        kn_rows_any(X, ldx, W, wq, Y, ldy, M, 0, K, N);
        if (wscale)
            for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n)
                    Y[m * ldy + n] = Y[m * ldy + n] * wscale[n] + (bias ? bias[n] : 0.f);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        TEAM_ID;
        kn_team(X, ldx, W, wq, wscale, bias, Y, ldy, scratch, 0, ACT_LINEAR, M, K, N, t, T);
    }
}

static inline float hsum(vf v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int i = 0; i < VL; ++i) s += v[i];
    return s;
#endif
}

/* One row of X (the decoding case) against rows n .. n+3 of an fp32 (N, K) W:
   Y[n + j] = dot(x, W[n + j, :]). Four interleaved streams, one accumulator each: on the AMD
   EPYC this is measured on, one row at a time (one stream, two accumulators) read the (V, C)
   LM head at 14.7 GB/s with two threads, four at a time at 28-35 GB/s (the tied head is a
   third of GPT-2 small's bytes per token), and with the next four rows prefetched into L2
   (pf_step) 1.2-1.6x faster again on the AVX-512 EPYC (23 -> 37 GB/s). The bf16 and int8 rows
   measured slower this way (their widening, not the stream, is what limits them) and keep one
   row at a time. */
static inline void nk_four(const float *restrict x, const float *restrict W, int64_t K,
                           int64_t n, int64_t n1, float *restrict Y) {
    const int64_t Kn = K / NW * NW;
    const float *w = W + n * K;
    vn a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    pf_t pf = pf_begin(w + 4 * K, n + 8 <= n1 ? 4 * K * 4 : 0, Kn / NW);
    for (int64_t k = 0; k < Kn; k += NW) {
        pf_step(&pf, 0);
        const vn xv = ldn(x + k);
        a0 += xv * ldn(w + k);
        a1 += xv * ldn(w + K + k);
        a2 += xv * ldn(w + 2 * K + k);
        a3 += xv * ldn(w + 3 * K + k);
    }
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    for (int i = 0; i < NW; ++i) {
        s[0] += a0[i];
        s[1] += a1[i];
        s[2] += a2[i];
        s[3] += a3[i];
    }
    for (int64_t k = Kn; k < K; ++k)
        for (int j = 0; j < 4; ++j) s[j] += x[k] * w[j * K + k];
    for (int j = 0; j < 4; ++j) Y[n + j] = s[j];
}

/* Y[m, n] = dot(X[m, :], W[n, :]) for n0 <= n < n1: for one row of X (decoding) four rows of
   W at a time (nk_four), for more rows of X one row of W at a time. */
static void nk_rows(const float *restrict X, int64_t ldx, const float *restrict W,
                    float *restrict Y, int64_t ldy, int64_t M, int64_t K, int64_t n0,
                    int64_t n1) {
    const int64_t K2 = K / (2 * VL) * (2 * VL);
    if (M == 1)
        for (; n0 + 4 <= n1; n0 += 4) nk_four(X, W, K, n0, n1, Y);
    for (int64_t n = n0; n < n1; ++n) {
        const float *w = W + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const float *x = X + m * ldx;
            vf a0 = {0}, a1 = {0};
            for (int64_t k = 0; k < K2; k += 2 * VL) {
                a0 += ld(x + k) * ld(w + k);
                a1 += ld(x + k + VL) * ld(w + k + VL);
            }
            float s = hsum(a0 + a1);
            for (int64_t k = K2; k < K; ++k) s += x[k] * w[k];
            Y[m * ldy + n] = s;
        }
    }
}

/* nk_rows for a bfloat16 W (native vector width, as kn_rows_bf16). */
static void nk_rows_bf16(const float *restrict X, int64_t ldx, const uint16_t *restrict W,
                         float *restrict Y, int64_t ldy, int64_t M, int64_t K, int64_t n0,
                         int64_t n1) {
    const int64_t K2 = K / (2 * NW) * (2 * NW);
#ifdef BF16_PAIRS
    if (M == 1 && K <= 16384) { /* decoding: x split once into the even and odd elements of
                                   each 16, so every 16 weights widen without a shuffle */
        const int64_t K16 = K / 16 * 16;
        float xs[K16 > 0 ? K16 : 1];
        for (int64_t b = 0; b < K16; b += 16)
            for (int j = 0; j < 8; ++j) {
                xs[b + j] = X[b + 2 * j];
                xs[b + 8 + j] = X[b + 2 * j + 1];
            }
        for (; n0 < n1; ++n0) {
            const uint16_t *w = W + n0 * K;
            __m256 ae = _mm256_setzero_ps(), ao = _mm256_setzero_ps(), e, o;
            for (int64_t b = 0; b < K16; b += 16) {
                ldh16(w + b, &e, &o);
                ae = _mm256_fmadd_ps(_mm256_loadu_ps(xs + b), e, ae);
                ao = _mm256_fmadd_ps(_mm256_loadu_ps(xs + b + 8), o, ao);
            }
            const vn a = (vn)_mm256_add_ps(ae, ao);
            float sum = 0.f;
            for (int i = 0; i < NW; ++i) sum += a[i];
            for (int64_t k = K16; k < K; ++k) sum += X[k] * bf(w[k]);
            Y[n0] = sum;
        }
        return;
    }
#endif
    for (int64_t n = n0; n < n1; ++n) {
        const uint16_t *w = W + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const float *x = X + m * ldx;
            vn a0 = {0}, a1 = {0};
            for (int64_t k = 0; k < K2; k += 2 * NW) {
                a0 += ldn(x + k) * ldnh(w + k);
                a1 += ldn(x + k + NW) * ldnh(w + k + NW);
            }
            a0 += a1;
            float s = 0.f;
            for (int i = 0; i < NW; ++i) s += a0[i];
            for (int64_t k = K2; k < K; ++k) s += x[k] * bf(w[k]);
            Y[m * ldy + n] = s;
        }
    }
}

/* nk_rows for an int8 W with one scale per row: Y[m, n] = scale[n] * dot(X[m, :], Q[n, :]). */
static void nk_rows_i8(const float *restrict X, int64_t ldx, const int8_t *restrict W,
                       const float *restrict wscale, float *restrict Y, int64_t ldy, int64_t M,
                       int64_t K, int64_t n0, int64_t n1) {
    const int64_t K2 = K / (2 * NW) * (2 * NW);
    for (int64_t n = n0; n < n1; ++n) {
        const int8_t *w = W + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const float *x = X + m * ldx;
            vn a0 = {0}, a1 = {0};
            for (int64_t k = 0; k < K2; k += 2 * NW) {
                a0 += ldn(x + k) * ldn8(w + k);
                a1 += ldn(x + k + NW) * ldn8(w + k + NW);
            }
            a0 += a1;
            float s = 0.f;
            for (int i = 0; i < NW; ++i) s += a0[i];
            for (int64_t k = K2; k < K; ++k) s += x[k] * (float)w[k];
            Y[m * ldy + n] = s * wscale[n];
        }
    }
}

static void nk_any(const float *X, int64_t ldx, const void *W, int wq, const float *wscale,
                   float *Y, int64_t ldy, int64_t M, int64_t K, int64_t n0, int64_t n1) {
    if (wq == WQ_INT8) nk_rows_i8(X, ldx, W, wscale, Y, ldy, M, K, n0, n1);
    else if (wq == WQ_BF16) nk_rows_bf16(X, ldx, W, Y, ldy, M, K, n0, n1);
    else nk_rows(X, ldx, W, Y, ldy, M, K, n0, n1);
}

/* Y (M, N) = X (M, K) @ W^T with W (N, K); the N rows are split into nt contiguous blocks. */
void gpt2_gemv_nk(const float *X, int64_t ldx, const void *W, int wq, const float *wscale,
                  float *Y, int64_t ldy, int64_t M, int64_t K, int64_t N, int nt) {
    if (nt <= 1) {
        nk_any(X, ldx, W, wq, wscale, Y, ldy, M, K, 0, N);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        TEAM_ID;
        const int64_t chunk = (N + T - 1) / T;
        int64_t n0 = t * chunk, n1 = n0 + chunk;
        if (n1 > N) n1 = N;
        if (n0 < n1) nk_any(X, ldx, W, wq, wscale, Y, ldy, M, K, n0, n1);
    }
}


/* ------------------------------------------------------------------------------------------ */
/* One whole single-token decoding step of GPT-2 (eval mode, no cross-attention).             */
/* ------------------------------------------------------------------------------------------ */

static inline float dot(const float *a, const float *b, int64_t n) {
    const int64_t nv = n / VL * VL;
    vf acc = {0};
    for (int64_t i = 0; i < nv; i += VL) acc += ld(a + i) * ld(b + i);
    float s = hsum(acc);
    for (int64_t i = nv; i < n; ++i) s += a[i] * b[i];
    return s;
}

static void layer_norm(const float *x, const float *w, const float *b, float *y, int64_t C,
                       float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < C; ++i) mean += x[i];
    mean /= (double)C;
    for (int64_t i = 0; i < C; ++i) {
        const double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)C;
    const float r = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
    for (int64_t i = 0; i < C; ++i) y[i] = (x[i] - m) * r * w[i] + b[i];
}


/* h = the embedding of token `id` (wte row, widened or dequantized) + wpe row `pos` */
static inline void embed(float *h, const void *wte, int wq, const float *wte_s, const float *wpe,
                         int64_t id, int64_t pos, int64_t C) {
    for (int64_t i = 0; i < C; ++i)
        h[i] = (wq == WQ_INT8   ? (float)((const int8_t *)wte)[id * C + i] * wte_s[id]
                : wq == WQ_BF16 ? bf(((const uint16_t *)wte)[id * C + i])
                                : ((const float *)wte)[id * C + i]) +
               wpe[pos * C + i];
}

/* o (D) = softmax(q . k_j * scale + bias_j, j < n) weighted sum of v_j; s: n floats of scratch */
static inline void attend(const float *q, const float *kh, const float *vh, const float *bm,
                          int64_t n, float scale, float *s, float *o, int64_t D) {
    float mx = -INFINITY, sum = 0.f;
    for (int64_t j = 0; j < n; ++j) {
        s[j] = dot(q, kh + j * D, D) * scale + bm[j];
        if (s[j] > mx) mx = s[j];
    }
    for (int64_t j = 0; j < n; ++j) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; ++j) {
        const float w = s[j] * inv;
        const float *vj = vh + j * D;
        for (int64_t d = 0; d < D; ++d) o[d] += w * vj[d];
    }
}

/*
 * logits (M, V) for one new token per row.
 *   ids, positions (M): token ids and position ids (already validated by the caller)
 *   glob: wte (V, C), wpe (P, C), ln_f weight, ln_f bias, LM head: (V, C) or, with
 *         head_kn, (C, V)
 *   layers: per layer 14 pointers: ln_1 w, b, c_attn w (C, 3C), b, attn c_proj w (C, C), b,
 *           ln_2 w, b, c_fc w (C, F), b, mlp c_proj w (F, C), b, key cache, value cache
 *           (M, H, L, D); the new key/value are written at slot `pos`
 *   scales (n_layer): the attention score scale of each layer
 *   bias (M, L): additive mask over cache slots (padding); slots after `pos` are never read
 *   work: gpt2_decode_work_floats(...) floats of scratch
 *   wq: the kind of wte, the LM head and the four matrices of each layer: WQ_F32, WQ_BF16 or
 *       WQ_INT8 (the layer norms, biases, wpe and the cache stay fp32)
 *   qscale (WQ_INT8 only): fp32 scales: [0] wte's per-row (V), [1] the LM head's per-vocab-entry
 *       (V), then per layer 4 per-output-channel vectors (c_attn 3C, attn c_proj C, c_fc F,
 *       mlp c_proj C)
 */
void gpt2_decode_step(const int64_t *ids, const int64_t *positions, void *const *glob,
                      void *const *layers, const float *scales, const float *bias, int64_t pos,
                      int64_t M, int64_t C, int64_t H, int64_t L, int64_t F, int64_t V,
                      int64_t n_layer, float eps, int act, int head_kn, float *logits,
                      float *work, int nt, int wq, const void *const *qscale) {
    const int64_t D = C / H;
    float *h = work, *x = h + M * C, *qkv = x + M * C, *att = qkv + M * 3 * C,
          *f = att + M * C, *tmp = f + M * F, *scores = tmp + M * C, *part = scores + M * H * L;
    const void *wte = glob[0];
    const float *wpe = glob[1], *lnf_w = glob[2], *lnf_b = glob[3];
    const void *head = glob[4];
    const float *wte_s = wq == WQ_INT8 ? qscale[0] : 0, *head_s = wq == WQ_INT8 ? qscale[1] : 0;
    if (nt < 1) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        TEAM_ID;
        for (int64_t m = t; m < M; m += T)
            embed(h + m * C, wte, wq, wte_s, wpe, ids[m], positions[m], C);
        BARRIER
        for (int64_t l = 0; l < n_layer; ++l) {
            void *const *p = layers + l * 14;
            float *kc = p[12], *vc = p[13];
            const float *const *qs = wq == WQ_INT8 ? (const float *const *)qscale + 2 + 4 * l : 0;
#define QS(j) (qs ? qs[j] : 0)
            for (int64_t m = t; m < M; m += T)
                layer_norm(h + m * C, p[0], p[1], x + m * C, C, eps);
            BARRIER
            kn_team(x, C, p[2], wq, QS(0), p[3], qkv, 3 * C, part, 0, ACT_LINEAR, M, C, 3 * C, t, T);
            /* attention: each (row, head) pair writes its new key/value, then attends */
            const float scale = scales[l];
            for (int64_t pr = t; pr < M * H; pr += T) {
                const int64_t m = pr / H, hh = pr % H;
                const float *q = qkv + m * 3 * C + hh * D;
                float *kh = kc + pr * L * D, *vh = vc + pr * L * D;
                memcpy(kh + pos * D, qkv + m * 3 * C + C + hh * D, D * sizeof(float));
                memcpy(vh + pos * D, qkv + m * 3 * C + 2 * C + hh * D, D * sizeof(float));
                attend(q, kh, vh, bias + m * L, pos + 1, scale, scores + pr * L,
                       att + m * C + hh * D, D);
            }
            BARRIER
            kn_team(att, C, p[4], wq, QS(1), p[5], tmp, C, part, h, ACT_LINEAR, M, C, C, t, T);
            for (int64_t m = t; m < M; m += T)
                layer_norm(h + m * C, p[6], p[7], x + m * C, C, eps);
            BARRIER
            kn_team(x, C, p[8], wq, QS(2), p[9], f, F, part, 0, act, M, C, F, t, T);
            kn_team(f, F, p[10], wq, QS(3), p[11], tmp, C, part, h, ACT_LINEAR, M, F, C, t, T);
#undef QS
        }
        for (int64_t m = t; m < M; m += T)
            layer_norm(h + m * C, lnf_w, lnf_b, x + m * C, C, eps);
        BARRIER
        if (head_kn) {
            kn_team(x, C, head, wq, head_s, 0, logits, V, part, 0, ACT_LINEAR, M, C, V, t, T);
        } else {
            const int64_t chunk = (V + T - 1) / T;
            int64_t n0 = t * chunk, n1 = n0 + chunk;
            if (n1 > V) n1 = V;
            if (n0 < n1) nk_any(x, C, head, wq, head_s, logits, V, M, C, n0, n1);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The prompt: T tokens per row through every block at once (a small GEMM, not a GEMV).       */
/* ------------------------------------------------------------------------------------------ */

/* Block sizes of gemm_team: KC rows of W are packed (widened to fp32 once) NC columns at a
   time into a per-thread panel, which the MR x NR register tile then reads from L1/L2 for
   every group of MR rows of X. Packing makes the weight kind irrelevant to the inner loop: a
   bf16 or int8 weight is widened once per prompt, not once per row. */
#define PF_KC 256
#define PF_NR (2 * NW)
#define PF_NC (16 * PF_NR)
#define PF_MR 6

/* acc (mr x NR, row stride ldy) += X (mr x kc, row stride ldx) @ P (kc x NR, packed) */
static inline __attribute__((always_inline)) void pf_tile(const int mr, int64_t kc,
                                                           const float *restrict X, int64_t ldx,
                                                           const float *restrict P,
                                                           float *restrict Y, int64_t ldy) {
    vn a0[PF_MR], a1[PF_MR];
    for (int i = 0; i < mr; ++i) {
        a0[i] = ldn(Y + i * ldy);
        a1[i] = ldn(Y + i * ldy + NW);
    }
    for (int64_t k = 0; k < kc; ++k) {
        const vn b0 = ldn(P + k * PF_NR), b1 = ldn(P + k * PF_NR + NW);
        for (int i = 0; i < mr; ++i) {
            const vn x = (vn){0} + X[i * ldx + k];
            a0[i] += x * b0;
            a1[i] += x * b1;
        }
    }
    for (int i = 0; i < mr; ++i) {
        stn(Y + i * ldy, a0[i]);
        stn(Y + i * ldy + NW, a1[i]);
    }
}

static void pf_tile_any(int mr, int64_t kc, const float *X, int64_t ldx, const float *P, float *Y,
                        int64_t ldy) {
    switch (mr) {
    case 1: pf_tile(1, kc, X, ldx, P, Y, ldy); break;
    case 2: pf_tile(2, kc, X, ldx, P, Y, ldy); break;
    case 3: pf_tile(3, kc, X, ldx, P, Y, ldy); break;
    case 4: pf_tile(4, kc, X, ldx, P, Y, ldy); break;
    case 5: pf_tile(5, kc, X, ldx, P, Y, ldy); break;
    default: pf_tile(6, kc, X, ldx, P, Y, ldy); break;
    }
}

/* P[s][k][0:NR] = W[k0 + k, n0 + s * NR + j] widened to fp32 (zero past column N) */
static void pf_pack(const void *W, int wq, int64_t N, int64_t k0, int64_t kc, int64_t n0,
                    int64_t nc, float *restrict P) {
    for (int64_t s = 0; s * PF_NR < nc; ++s)
        for (int64_t k = 0; k < kc; ++k) {
            float *p = P + (s * kc + k) * PF_NR;
            const int64_t c0 = n0 + s * PF_NR, row = (k0 + k) * N;
            const int64_t cn = N - c0 < PF_NR ? N - c0 : PF_NR;
            if (cn == PF_NR) {
                if (wq == WQ_INT8) {
                    stn(p, ldn8((const int8_t *)W + row + c0));
                    stn(p + NW, ldn8((const int8_t *)W + row + c0 + NW));
                } else if (wq == WQ_BF16) {
                    stn(p, ldnh((const uint16_t *)W + row + c0));
                    stn(p + NW, ldnh((const uint16_t *)W + row + c0 + NW));
                } else {
                    memcpy(p, (const float *)W + row + c0, PF_NR * sizeof(float));
                }
            } else {
                for (int64_t j = 0; j < PF_NR; ++j) {
                    const int64_t i = row + c0 + j;
                    p[j] = j >= cn                ? 0.f
                           : wq == WQ_INT8        ? (float)((const int8_t *)W)[i]
                           : wq == WQ_BF16        ? bf(((const uint16_t *)W)[i])
                                                  : ((const float *)W)[i];
                }
            }
        }
}

/*
 * Inside a team: Y = act(bias + X (M, K) @ W (K, N)) or, with `resid`, resid += bias + X @ W
 * (Y is then scratch). Unlike kn_team this splits the N columns among the threads (each
 * reads its share of W once, for all M rows) and needs no reduction; an int8 W's column scales
 * multiply the finished sums. `pack`: this thread's PF_KC * PF_NC floats.
 */
static void gemm_team(const float *X, int64_t ldx, const void *W, int wq, const float *wscale,
                      const float *bias, float *Y, int64_t ldy, float *resid, int act, int64_t M,
                      int64_t K, int64_t N, float *pack, int t, int T) {
    const int64_t strips = (N + PF_NR - 1) / PF_NR, per = (strips + T - 1) / T;
    const int64_t c0 = t * per * PF_NR, c1 = (t + 1) * per * PF_NR < N ? (t + 1) * per * PF_NR : N;
    float edge[PF_MR * PF_NR];
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = c0; n < c1; ++n) Y[m * ldy + n] = 0.f;
    for (int64_t k0 = 0; k0 < K; k0 += PF_KC) {
        const int64_t kc = K - k0 < PF_KC ? K - k0 : PF_KC;
        for (int64_t n0 = c0; n0 < c1; n0 += PF_NC) {
            const int64_t nc = c1 - n0 < PF_NC ? c1 - n0 : PF_NC;
            pf_pack(W, wq, N, k0, kc, n0, nc, pack);
            for (int64_t m0 = 0; m0 < M; m0 += PF_MR) {
                const int mr = M - m0 < PF_MR ? (int)(M - m0) : PF_MR;
                for (int64_t s = 0; s * PF_NR < nc; ++s) {
                    const int64_t n = n0 + s * PF_NR, cn = c1 - n < PF_NR ? c1 - n : PF_NR;
                    const float *x = X + m0 * ldx + k0, *p = pack + s * kc * PF_NR;
                    float *y = Y + m0 * ldy + n;
                    if (cn == PF_NR) {
                        pf_tile_any(mr, kc, x, ldx, p, y, ldy);
                    } else { /* the last, partial strip: through a full-width buffer */
                        for (int i = 0; i < mr; ++i)
                            for (int64_t j = 0; j < PF_NR; ++j)
                                edge[i * PF_NR + j] = j < cn ? y[i * ldy + j] : 0.f;
                        pf_tile_any(mr, kc, x, ldx, p, edge, PF_NR);
                        for (int i = 0; i < mr; ++i)
                            for (int64_t j = 0; j < cn; ++j) y[i * ldy + j] = edge[i * PF_NR + j];
                    }
                }
            }
        }
    }
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = c0; n < c1; ++n) {
            float y = Y[m * ldy + n];
            if (wscale) y *= wscale[n];
            if (bias) y += bias[n];
            if (resid) resid[m * ldy + n] += y;
            else Y[m * ldy + n] = activate(y, act);
        }
    BARRIER
}

/*
 * The prompt of each row: P tokens at cache slots [0, P), every block at once, writing their
 * keys and values into the caches; logits (M, V) of each row's last token (what generation
 * samples from). Arguments as gpt2_decode_step's, except ids and positions (M, P) and bias
 * (M, L) the additive padding mask over cache slots (slots 0..P-1 are read, causally). (Inside
 * the parallel region T is the team size, as everywhere in this file.)
 * Work: gpt2_prefill_work_floats(...) floats.
 */
void gpt2_prefill(const int64_t *ids, const int64_t *positions, void *const *glob,
                  void *const *layers, const float *scales, const float *bias, int64_t P,
                  int64_t M, int64_t C, int64_t H, int64_t L, int64_t F, int64_t V,
                  int64_t n_layer, float eps, int act, int head_kn, float *logits, float *work,
                  int nt, int wq, const void *const *qscale) {
    const int64_t D = C / H, R = M * P;
    float *h = work, *x = h + R * C, *qkv = x + R * C, *att = qkv + R * 3 * C, *f = att + R * C,
          *tmp = f + R * F, *last = tmp + R * C, *scores = last + M * C;
    float *packs = scores + (int64_t)(nt < 1 ? 1 : nt) * L;
    const void *wte = glob[0];
    const float *wpe = glob[1], *lnf_w = glob[2], *lnf_b = glob[3];
    const void *head = glob[4];
    const float *wte_s = wq == WQ_INT8 ? qscale[0] : 0, *head_s = wq == WQ_INT8 ? qscale[1] : 0;
    if (nt < 1) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        TEAM_ID;
        float *pack = packs + (int64_t)t * PF_KC * PF_NC, *s = scores + (int64_t)t * L;
        for (int64_t r = t; r < R; r += T)
            embed(h + r * C, wte, wq, wte_s, wpe, ids[r], positions[r], C);
        BARRIER
        for (int64_t l = 0; l < n_layer; ++l) {
            void *const *p = layers + l * 14;
            float *kc = p[12], *vc = p[13];
            const float *const *qs = wq == WQ_INT8 ? (const float *const *)qscale + 2 + 4 * l : 0;
#define QS(j) (qs ? qs[j] : 0)
            for (int64_t r = t; r < R; r += T) layer_norm(h + r * C, p[0], p[1], x + r * C, C, eps);
            BARRIER
            gemm_team(x, C, p[2], wq, QS(0), p[3], qkv, 3 * C, 0, ACT_LINEAR, R, C, 3 * C, pack,
                      t, T);
            for (int64_t pr = t; pr < M * H; pr += T) { /* keys and values into the cache */
                const int64_t m = pr / H, hh = pr % H;
                for (int64_t i = 0; i < P; ++i) {
                    const float *src = qkv + (m * P + i) * 3 * C + hh * D;
                    memcpy(kc + (pr * L + i) * D, src + C, D * sizeof(float));
                    memcpy(vc + (pr * L + i) * D, src + 2 * C, D * sizeof(float));
                }
            }
            BARRIER
            const float scale = scales[l];
            for (int64_t job = t; job < M * H * P; job += T) { /* (row, head, query) */
                const int64_t pr = job / P, i = job % P, m = pr / H, hh = pr % H;
                const float *q = qkv + (m * P + i) * 3 * C + hh * D;
                attend(q, kc + pr * L * D, vc + pr * L * D, bias + m * L, i + 1, scale, s,
                       att + (m * P + i) * C + hh * D, D);
            }
            BARRIER
            gemm_team(att, C, p[4], wq, QS(1), p[5], tmp, C, h, ACT_LINEAR, R, C, C, pack, t, T);
            for (int64_t r = t; r < R; r += T) layer_norm(h + r * C, p[6], p[7], x + r * C, C, eps);
            BARRIER
            gemm_team(x, C, p[8], wq, QS(2), p[9], f, F, 0, act, R, C, F, pack, t, T);
            gemm_team(f, F, p[10], wq, QS(3), p[11], tmp, C, h, ACT_LINEAR, R, F, C, pack, t, T);
#undef QS
        }
        for (int64_t m = t; m < M; m += T)
            layer_norm(h + (m * P + P - 1) * C, lnf_w, lnf_b, last + m * C, C, eps);
        BARRIER
        if (head_kn) {
            gemm_team(last, C, head, wq, head_s, 0, logits, V, 0, ACT_LINEAR, M, C, V, pack, t, T);
        } else {
            const int64_t chunk = (V + T - 1) / T;
            int64_t n0 = t * chunk, n1 = n0 + chunk;
            if (n1 > V) n1 = V;
            if (n0 < n1) nk_any(last, C, head, wq, head_s, logits, V, M, C, n0, n1);
        }
    }
}

/* Scratch floats gpt2_prefill needs. */
int64_t gpt2_prefill_work_floats(int64_t M, int64_t P, int64_t C, int64_t L, int64_t F, int nt) {
    if (nt < 1) nt = 1;
    const int64_t R = M * P;
    return R * (7 * C + F) + M * C + (int64_t)nt * (L + PF_KC * PF_NC) + 64;
}

/* Scratch floats gpt2_decode_step needs. */
int64_t gpt2_decode_work_floats(int64_t M, int64_t C, int64_t H, int64_t L, int64_t F, int64_t V,
                                int nt) {
    int64_t NMAX = F > 3 * C ? F : 3 * C;
    if (V > NMAX) NMAX = V; /* an LM head stored (C, V) reduces partial logits */
    if (nt < 1) nt = 1;
    return M * C * 4 + M * 3 * C + M * F + M * H * L + (int64_t)(nt - 1) * M * NMAX + 64;
}

int gpt2_kernels_abi(void) { return 6; }
