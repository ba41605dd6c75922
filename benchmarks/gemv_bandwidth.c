/*
 * Bytes per second of the decoding GEMVs in gpt2_core/csrc/gpt2_kernels.c, per weight kind
 * (fp32, bf16, int8) and GPT-2 small shape, with no Python in the loop: the figures behind
 * the "streams X GB/s" statements in benchmarks/README.md and docs/cpu-kernels.md.
 *
 * Each (in, out) shape is timed over 48 distinct random matrices in turn (more than the L3
 * cache, as a decoding step reads 12 layers' worth), the (V, C) LM head over one 50257 x 768
 * matrix; random bytes, because pages of identical content read faster on this VM.
 *
 *   cc -O3 -march=native -fopenmp -std=gnu11 benchmarks/gemv_bandwidth.c -o /tmp/gemv -lm
 *   /tmp/gemv            # 2 threads
 *   /tmp/gemv 1          # 1 thread
 */
#include "../gpt2_core/csrc/gpt2_kernels.c"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *random_bytes(size_t n) {
    unsigned char *p = malloc(n);
    for (size_t j = 0; j < n; ++j) p[j] = (unsigned char)(rand() & 0x3f);
    return p;
}

static const char *KIND[] = {"fp32", "bf16", "int8"};

int main(int argc, char **argv) {
    const int nt = argc > 1 ? atoi(argv[1]) : 2;
    const int64_t shapes[][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
    const int nm = 48, reps = 10;
    float *x = malloc(4096 * sizeof(float)), *y = malloc(50257 * sizeof(float));
    float *b = calloc(4096, sizeof(float)), *sc = malloc(50257 * sizeof(float));
    float *scratch = malloc((size_t)nt * 4096 * sizeof(float));
    for (int i = 0; i < 4096; ++i) x[i] = 0.01f * (i % 7);
    for (int i = 0; i < 50257; ++i) sc[i] = 1.f;
    printf("threads %d; GB/s of weight bytes read (median of 3 runs)\n", nt);
    for (int s = 0; s < 4; ++s) {
        const int64_t K = shapes[s][0], N = shapes[s][1];
        for (int wq = 0; wq < 3; ++wq) {
            const size_t bytes = (size_t)K * N * (wq == 0 ? 4 : wq == 1 ? 2 : 1);
            void *W[48];
            for (int i = 0; i < nm; ++i) W[i] = random_bytes(bytes);
            double gbs[3];
            for (int run = 0; run < 3; ++run) {
                for (int i = 0; i < nm; ++i)
                    gpt2_gemv_kn(x, K, W[i], wq, sc, b, y, N, 1, K, N, scratch, nt);
                const double t0 = now();
                for (int r = 0; r < reps; ++r)
                    for (int i = 0; i < nm; ++i)
                        gpt2_gemv_kn(x, K, W[i], wq, sc, b, y, N, 1, K, N, scratch, nt);
                gbs[run] = (double)reps * nm * bytes / (now() - t0) / 1e9;
            }
            const double med = gbs[0] > gbs[1] ? (gbs[1] > gbs[2] ? gbs[1] : gbs[0] > gbs[2] ? gbs[2] : gbs[0])
                                               : (gbs[0] > gbs[2] ? gbs[0] : gbs[1] > gbs[2] ? gbs[2] : gbs[1]);
            printf("  kn (%4ld, %4ld) %s: %5.1f GB/s\n", (long)K, (long)N, KIND[wq], med);
            for (int i = 0; i < nm; ++i) free(W[i]);
        }
    }
    for (int wq = 0; wq < 3; ++wq) {
        const int64_t V = 50257, C = 768;
        const size_t bytes = (size_t)V * C * (wq == 0 ? 4 : wq == 1 ? 2 : 1);
        void *W = random_bytes(bytes);
        double gbs[3];
        for (int run = 0; run < 3; ++run) {
            gpt2_gemv_nk(x, C, W, wq, sc, y, V, 1, C, V, nt);
            const double t0 = now();
            for (int r = 0; r < 2 * reps; ++r) gpt2_gemv_nk(x, C, W, wq, sc, y, V, 1, C, V, nt);
            gbs[run] = 2.0 * reps * bytes / (now() - t0) / 1e9;
        }
        const double med = gbs[0] > gbs[1] ? (gbs[1] > gbs[2] ? gbs[1] : gbs[0] > gbs[2] ? gbs[2] : gbs[0])
                                           : (gbs[0] > gbs[2] ? gbs[0] : gbs[1] > gbs[2] ? gbs[2] : gbs[1]);
        printf("  nk head (50257, 768) %s: %5.1f GB/s\n", KIND[wq], med);
        free(W);
    }
    return 0;
}
