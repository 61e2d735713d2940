// Causal grouped-query attention over the KV cache, fp32 throughout.
//
// Token i's query head h reads kv head h / (n_heads / n_kv_heads) at positions 0..pos[i] of
// slot[i]. One work item is (token, run of kv heads): the query heads of each kv head share
// its K and V rows while they are in cache. Scores are cpu_dot dot products, the softmax
// subtracts the max and sums in position order, and the output accumulates positions in
// order, so a token's output is independent of the batch, of the run length and of the
// thread that computes it.
#include "kernels/cpu/cpu_internal.h"

#include <omp.h>

void cpu_kv_write(backend *be, float *k_cache, float *v_cache, const float *k, const float *v,
                  const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride) {
    for (int i = 0; i < n; i++) {
        size_t at = (size_t)slot[i] * (size_t)slot_stride + (size_t)pos[i] * (size_t)kv_dim;
        memcpy(k_cache + at, k + (size_t)i * kv_dim, (size_t)kv_dim * sizeof(float));
        memcpy(v_cache + at, v + (size_t)i * kv_dim, (size_t)kv_dim * sizeof(float));
    }
}

// Work items are (token, run of kv_run kv heads). One position of a run is kv_run * head_dim
// contiguous floats of K (and of V); runs are as long as the thread count allows (fewer,
// longer runs read memory in longer pieces: a 4 KB cache row per position at Llama 3 8B, so
// every position is a new page for the hardware prefetcher). A decode token's rows are also
// prefetched ahead. The arithmetic of each output does not depend on the run length.
#define AHEAD 4

static inline void prefetch_run(const float *p, int64_t floats) {
    for (int64_t f = 0; f < floats; f += 16) __builtin_prefetch(p + f, 0, 3);
}

// o[h][c] += s[h][p] * v[p][c] for h < HN query heads of one kv head, c < 16 C columns, over
// positions p0..p1-1 in order: the sums stay in registers for the block (HN x C vectors) and
// each element is the same fma chain as one position at a time from o's value.
static inline __attribute__((always_inline))
void weighted_block(int HN, int C, float *o, int64_t ldo, const float *s, int64_t lds, const float *v, int64_t ldv,
                    int64_t p0, int64_t p1) {
    v16 acc[4][4];
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) acc[h][c] = v16_load(o + h * ldo + c * LANES);
    for (int64_t p = p0; p < p1; p++) {
        v16 vv[4];
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) vv[c] = v16_load(v + p * ldv + c * LANES);
#pragma GCC unroll 4
        for (int h = 0; h < HN; h++) {
            v16 e = (v16){0} + s[h * lds + p];
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) acc[h][c] += e * vv[c];
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) v16_store(o + h * ldo + c * LANES, acc[h][c]);
}

typedef void (*weighted_fn)(float *, int64_t, const float *, int64_t, const float *, int64_t, int64_t, int64_t);
#define WEIGHTED_FN(HN, C) \
    static void weighted_##HN##_##C(float *o, int64_t ldo, const float *s, int64_t lds, const float *v, int64_t ldv, \
                                    int64_t p0, int64_t p1) { weighted_block(HN, C, o, ldo, s, lds, v, ldv, p0, p1); }
WEIGHTED_FN(1, 1) WEIGHTED_FN(1, 2) WEIGHTED_FN(1, 3) WEIGHTED_FN(1, 4)
WEIGHTED_FN(2, 1) WEIGHTED_FN(2, 2) WEIGHTED_FN(2, 3) WEIGHTED_FN(2, 4)
WEIGHTED_FN(3, 1) WEIGHTED_FN(3, 2) WEIGHTED_FN(3, 3) WEIGHTED_FN(3, 4)
WEIGHTED_FN(4, 1) WEIGHTED_FN(4, 2) WEIGHTED_FN(4, 3) WEIGHTED_FN(4, 4)
static const weighted_fn weighted[4][4] = {
    {weighted_1_1, weighted_1_2, weighted_1_3, weighted_1_4}, {weighted_2_1, weighted_2_2, weighted_2_3, weighted_2_4},
    {weighted_3_1, weighted_3_2, weighted_3_3, weighted_3_4}, {weighted_4_1, weighted_4_2, weighted_4_3, weighted_4_4}};

#ifdef __AVX512F__
#include <immintrin.h>
// The scores of one query head against 8 consecutive positions: 8 dots of `chunks` 16-float
// chunks, each cpu_dot's fma chain from 0, then the 8 reduction trees run side by side. Each
// level adds the same lane pairs as v16_sum ((l, l+8), (l, l+4), (l, l+2), (l, l+1)), only
// for several dots in one vector, so every score is bitwise cpu_dot's; the last permute puts
// them in position order. out[p] = dot(q, k + p * ldk) * scale. Eight, not 16: K rows 4 KB
// apart share an L1 set, and 16 of them would not fit its 12 ways.
static void scores8(float *out, const float *q, const float *k, int64_t ldk, int chunks, float scale) {
    __m512 acc[8];
    for (int p = 0; p < 8; p++) acc[p] = _mm512_setzero_ps();
    for (int c = 0; c < chunks; c++) {
        __m512 qv = _mm512_loadu_ps(q + c * LANES);
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++) acc[p] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k + p * ldk + c * LANES), acc[p]);
    }
    __m512 x[4], z[2];
    for (int j = 0; j < 4; j++)   // lanes l + (l + 8): [dot 2j | dot 2j+1], 8 lanes each
        x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * j], acc[2 * j + 1], 0x44),
                             _mm512_shuffle_f32x4(acc[2 * j], acc[2 * j + 1], 0xEE));
    for (int j = 0; j < 2; j++)   // (l, l + 4): one 128-bit block per dot, dots 4j..4j+3
        z[j] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * j], x[2 * j + 1], 0x88),
                             _mm512_shuffle_f32x4(x[2 * j], x[2 * j + 1], 0xDD));
    // (l, l + 2): block b holds dot b's two sums, then dot b+4's
    __m512 t = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 2, 3, 2)));
    // (l, l + 1): lane 4b holds dot b, lane 4b + 1 dot b + 4
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(t, t, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(t, t, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 sorted = _mm512_mul_ps(_mm512_permutexvar_ps(order, r), _mm512_set1_ps(scale));
    _mm256_storeu_ps(out, _mm512_castps512_ps256(sorted));
}
#define ATT_SCORES8 1
#else
#define ATT_SCORES8 0
#endif

// Positions per block of the weighted sum: the block's V rows of the run (8 x 4 KB at Llama 3
// 8B) stay in L1 while every query head's sums run over them.
#define ATT_PB 8

void cpu_attention(backend *be, float *out, const float *q, const float *k_cache, const float *v_cache,
                   const int32_t *slot, const int32_t *pos, int n,
                   int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride) {
    if (n <= 0) return;
    int group = n_heads / n_kv_heads;
    int64_t kv_dim = (int64_t)n_kv_heads * head_dim, q_dim = (int64_t)n_heads * head_dim;
    float scale = 1.0f / sqrtf((float)head_dim);
    int32_t max_pos = 0;
    for (int i = 0; i < n; i++) max_pos = pos[i] > max_pos ? pos[i] : max_pos;
    int threads = cpu_threads(be);
    int kv_run = n_kv_heads;   // halved while there are fewer than two items per thread
    while (kv_run % 2 == 0 && (int64_t)n * (n_kv_heads / kv_run) < 2 * threads) kv_run /= 2;
    int runs = n_kv_heads / kv_run;
    int64_t items = (int64_t)n * runs;

    size_t per_thread = (size_t)kv_run * group * (size_t)(max_pos + 1);
    float *scores = cpu_scratch(be, CPU_SCRATCH_ATTENTION, (size_t)threads * per_thread * sizeof(float));
#pragma omp parallel num_threads(threads) if (items > 1)
    {
        float *score = scores + (size_t)omp_get_thread_num() * per_thread;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int i = (int)(it / runs), g0 = (int)(it % runs) * kv_run;
            int64_t len = (int64_t)pos[i] + 1, run = (int64_t)kv_run * head_dim;
            int heads = kv_run * group;   // the query heads of the run, in order
            const float *kb = k_cache + (size_t)slot[i] * (size_t)slot_stride + (size_t)g0 * head_dim;
            const float *vb = v_cache + (size_t)slot[i] * (size_t)slot_stride + (size_t)g0 * head_dim;
            const float *qg = q + (size_t)i * q_dim + (size_t)g0 * group * head_dim;
            float *og = out + (size_t)i * q_dim + (size_t)g0 * group * head_dim;
            // A token alone in its sequence (decode) reads K and V from memory: prefetch. The
            // tokens of a prompt share them, so they are in cache, and prefetching only waits.
            int alone = (i == 0 || slot[i - 1] != slot[i]) && (i + 1 == n || slot[i + 1] != slot[i]);

            int64_t p = 0;
            // A prompt's token, its K rows in cache: 8 positions per query head at a time.
#if ATT_SCORES8
            if (!alone && head_dim % LANES == 0)
                for (; p + 8 <= len; p += 8)
                    for (int h = 0; h < heads; h++)
                        scores8(score + (size_t)h * len + p, qg + (size_t)h * head_dim,
                                 kb + (size_t)p * kv_dim + (size_t)(h / group) * head_dim, kv_dim, head_dim / LANES, scale);
#endif
            for (; p < len; p++) {
                const float *kp = kb + (size_t)p * kv_dim;
                if (alone && p + AHEAD < len) prefetch_run(kp + AHEAD * kv_dim, run);
                for (int g = 0; g < kv_run; g++) {
                    const float *k = kp + (size_t)g * head_dim, *qh = qg + (size_t)g * group * head_dim;
                    float *sg = score + (size_t)g * group * len;
                    int h = 0;
                    for (; h + 4 <= group; h += 4) {
                        float d[4];
                        cpu_dot4(d, qh + (size_t)h * head_dim, head_dim, k, head_dim);
                        for (int u = 0; u < 4; u++) sg[(h + u) * len + p] = d[u] * scale;
                    }
                    for (; h < group; h++) sg[h * len + p] = cpu_dot(qh + (size_t)h * head_dim, k, head_dim) * scale;
                }
            }

            for (int h = 0; h < heads; h++) {
                float *s = score + h * len, m = s[0];
                for (int64_t p = 1; p < len; p++) m = s[p] > m ? s[p] : m;
                for (int64_t p = 0; p < len; p++) s[p] = expf(s[p] - m);
                float *o = og + (size_t)h * head_dim;
                for (int j = 0; j < head_dim; j++) o[j] = 0.0f;
            }
            for (int64_t p0 = 0; p0 < len; p0 += ATT_PB) {
                int64_t p1 = p0 + ATT_PB < len ? p0 + ATT_PB : len;
                for (int64_t p = p1; alone && p < p1 + ATT_PB && p < len; p++) prefetch_run(vb + (size_t)p * kv_dim, run);
                for (int g = 0; g < kv_run; g++)
                    for (int h0 = 0; h0 < group; h0 += 4) {
                        int hn = group - h0 < 4 ? group - h0 : 4, h = g * group + h0, c = 0;
                        float *o = og + (size_t)h * head_dim;
                        const float *s = score + (size_t)h * len, *v = vb + (size_t)g * head_dim;
                        for (; c + LANES <= head_dim; ) {
                            int C = (head_dim - c) / LANES < 4 ? (head_dim - c) / LANES : 4;
                            weighted[hn - 1][C - 1](o + c, head_dim, s, len, v + c, kv_dim, p0, p1);
                            c += C * LANES;
                        }
                        for (; c < head_dim; c++)   // a head_dim that is not a multiple of 16
                            for (int64_t p = p0; p < p1; p++)
                                for (int u = 0; u < hn; u++) o[u * head_dim + c] += s[u * len + p] * v[p * kv_dim + c];
                    }
            }
            // Weights are normalised at the end: one division per output instead of per position.
            for (int h = 0; h < heads; h++) {
                float *s = score + h * len, sum = 0.0f, *o = og + (size_t)h * head_dim;
                for (int64_t p = 0; p < len; p++) sum += s[p];
                float inv = 1.0f / sum;
                for (int j = 0; j < head_dim; j++) o[j] *= inv;
            }
        }
    }
}
