// matmul: out[n, rows] = x[n, cols] . W^T with W in F32, BF16 or F16 widened on the fly.
//
// Determinism: every output element is one dot product computed by one scheme (see
// cpu_internal.h): 16 lane accumulators over 16-column chunks in increasing order, fma,
// zero-padded tail, fixed reduction tree. Tiles of several tokens x several rows only decide
// which dot products run side by side (sharing loads), never how one is summed, so results
// do not depend on n, on a token's place in the batch, on threads or on the weight dtype.
#include "cpu_internal.h"

#include <omp.h>

// ---------------------------------------------------------------------------- widening
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint32_t v16u32 __attribute__((vector_size(64)));
typedef _Float16 v16f16 __attribute__((vector_size(32)));

// 16 weights from row w at column c as fp32. BF16 is the top half of an fp32, so a shift
// widens it; both conversions are exact, so F32 and BF16 files with equal values agree.
static inline __attribute__((always_inline)) v16 w_load(const void *w, dtype_t dt, int64_t c) {
    if (dt == DT_F32) return v16_load((const float *)w + c);
    if (dt == DT_BF16) {
        v16u16 h;
        memcpy(&h, (const uint16_t *)w + c, sizeof h);
        v16u32 u = __builtin_convertvector(h, v16u32) << 16;
        return (v16)u;
    }
    v16f16 h;
    memcpy(&h, (const uint16_t *)w + c, sizeof h);
    return __builtin_convertvector(h, v16);
}

// The last m < 16 columns, zero-padded (0 * 0 adds nothing to a lane).
static inline v16 w_load_tail(const void *w, dtype_t dt, int64_t c, int64_t m) {
    float t[LANES] = {0};
    to_f32(t, (const char *)w + (size_t)c * dtype_size(dt), dt, (size_t)m);
    return v16_load(t);
}

static inline v16 x_load_tail(const float *x, int64_t c, int64_t m) {
    float t[LANES] = {0};
    memcpy(t, x + c, (size_t)m * sizeof(float));
    return v16_load(t);
}

float cpu_dot(const float *a, const float *b, int64_t n) {
    v16 acc = {0};
    int64_t c = 0;
    for (; c + LANES <= n; c += LANES) acc += v16_load(a + c) * v16_load(b + c);
    if (c < n) acc += x_load_tail(a, c, n - c) * x_load_tail(b, c, n - c);
    return v16_sum(acc);
}

// ---------------------------------------------------------------------------- the tile
// TB tokens x RB rows of dot products over all cols: each weight chunk is widened once and
// used TB times, each x chunk used RB times, all from registers. res[i * RB + j].
static inline __attribute__((always_inline))
void tile(int TB, int RB, dtype_t dt, float *res, const float *const *xr, const void *const *wr, int64_t cols) {
    v16 acc[4][8];
#pragma GCC unroll 8
    for (int i = 0; i < TB; i++)
#pragma GCC unroll 8
        for (int j = 0; j < RB; j++) acc[i][j] = (v16){0};
    int64_t c = 0;
    for (; c + LANES <= cols; c += LANES) {
        v16 wv[8];
#pragma GCC unroll 8
        for (int j = 0; j < RB; j++) wv[j] = w_load(wr[j], dt, c);
#pragma GCC unroll 8
        for (int i = 0; i < TB; i++) {
            v16 xv = v16_load(xr[i] + c);
#pragma GCC unroll 8
            for (int j = 0; j < RB; j++) acc[i][j] += xv * wv[j];
        }
    }
    if (c < cols) {
        v16 wv[8];
        for (int j = 0; j < RB; j++) wv[j] = w_load_tail(wr[j], dt, c, cols - c);
        for (int i = 0; i < TB; i++) {
            v16 xv = x_load_tail(xr[i], c, cols - c);
            for (int j = 0; j < RB; j++) acc[i][j] += xv * wv[j];
        }
    }
    for (int i = 0; i < TB; i++)
        for (int j = 0; j < RB; j++) res[i * RB + j] = v16_sum(acc[i][j]);
}

// One instance per (dtype, shape) so the accumulators live in registers. Decode (one token)
// runs 8 rows at once: 8 independent fma chains hide the fma latency while streaming W.
#define TILE_FNS(DT, SUF)                                                                                   \
    static void tile_1x8_##SUF(float *r, const float *const *x, const void *const *w, int64_t c) { tile(1, 8, DT, r, x, w, c); } \
    static void tile_1x4_##SUF(float *r, const float *const *x, const void *const *w, int64_t c) { tile(1, 4, DT, r, x, w, c); } \
    static void tile_2x4_##SUF(float *r, const float *const *x, const void *const *w, int64_t c) { tile(2, 4, DT, r, x, w, c); } \
    static void tile_3x4_##SUF(float *r, const float *const *x, const void *const *w, int64_t c) { tile(3, 4, DT, r, x, w, c); } \
    static void tile_4x4_##SUF(float *r, const float *const *x, const void *const *w, int64_t c) { tile(4, 4, DT, r, x, w, c); }
TILE_FNS(DT_F32, f32)
TILE_FNS(DT_BF16, bf16)
TILE_FNS(DT_F16, f16)

typedef void (*tile_fn)(float *, const float *const *, const void *const *, int64_t);
// [dtype][tokens - 1] for 4-row tiles
static const tile_fn tiles4[3][4] = {
    {tile_1x4_f32, tile_2x4_f32, tile_3x4_f32, tile_4x4_f32},
    {tile_1x4_bf16, tile_2x4_bf16, tile_3x4_bf16, tile_4x4_bf16},
    {tile_1x4_f16, tile_2x4_f16, tile_3x4_f16, tile_4x4_f16},
};
static const tile_fn tiles1x8[3] = {tile_1x8_f32, tile_1x8_bf16, tile_1x8_f16};

// ---------------------------------------------------------------------------- row ranges
// Tokens are taken TOKEN_TILE at a time so that the x rows of a tile stay in cache while
// the rows of W pass by; each W row is read once per token tile.
#define TOKEN_TILE 16

void cpu_matmul_rows(float *out, int64_t ldo, const float *x, int64_t ldx, int64_t n,
                     const weight_t *w, int64_t r0, int64_t r1) {
    const char *wd = w->data;
    size_t wstride = (size_t)w->ld * dtype_size(w->dtype);
    int64_t cols = w->cols;
    int dt = (int)w->dtype;
    // A short last block reuses its last row (or token) and drops the extra results, so one
    // tile shape serves every size.
    int rb = n == 1 ? 8 : 4;
    for (int64_t t0 = 0; t0 < n; t0 += TOKEN_TILE) {
        int64_t t1 = t0 + TOKEN_TILE < n ? t0 + TOKEN_TILE : n;
        for (int64_t r = r0; r < r1; r += rb) {
            int nr = r1 - r < rb ? (int)(r1 - r) : rb;
            const void *wr[8];
            for (int j = 0; j < rb; j++) wr[j] = wd + (size_t)(r + (j < nr ? j : nr - 1)) * wstride;
            for (int64_t t = t0; t < t1; t += 4) {
                int nt = t1 - t < 4 ? (int)(t1 - t) : 4;
                const float *xr[4];
                for (int i = 0; i < nt; i++) xr[i] = x + (size_t)(t + i) * (size_t)ldx;
                float res[32];
                if (rb == 8) tiles1x8[dt](res, xr, wr, cols);
                else tiles4[dt][nt - 1](res, xr, wr, cols);
                for (int i = 0; i < nt; i++)
                    for (int j = 0; j < nr; j++) out[(size_t)(t + i) * (size_t)ldo + (size_t)(r - r0 + j)] = res[i * rb + j];
            }
        }
    }
}

// ---------------------------------------------------------------------------- the op
// Rows are split in chunks of ROW_CHUNK handed out dynamically (the 2-core containers are
// shared, so a static split waits on the slowest core); the split cannot change results.
#define ROW_CHUNK 32

void cpu_matmul(float *out, const float *x, const weight_t *w, int n) {
    if (n <= 0 || w->rows <= 0) return;
    int64_t rows = w->rows, chunks = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(cpu_threads()) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t r0 = ch * ROW_CHUNK, r1 = r0 + ROW_CHUNK < rows ? r0 + ROW_CHUNK : rows;
        cpu_matmul_rows(out + r0, rows, x, w->cols, n, w, r0, r1);
    }
}
