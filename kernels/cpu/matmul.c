// matmul: out[n, rows] = x[n, cols] . W^T with W in F32, BF16 or F16 widened on the fly.
//
// Determinism: every output element is one dot product computed by one scheme (see
// cpu_internal.h): 16 lane accumulators over 16-column chunks in increasing order, fma,
// zero-padded tail, fixed reduction tree. Tiles of several tokens x several rows only decide
// which dot products run side by side (sharing loads), never how one is summed, so results
// do not depend on n, on a token's place in the batch, on threads or on the weight dtype.
#include "kernels/cpu/cpu_internal.h"

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


// ---------------------------------------------------------------------------- the tile
// TB tokens x RB rows of dot products over all cols: each weight chunk is widened once and
// used TB times, each x chunk used RB times, all from registers. res[i * RB + j].
static inline __attribute__((always_inline))
void tile(int TB, int RB, dtype_t dt, float *res, const float *const *xr, const void *const *wr, int64_t cols) {
    v16 acc[8][8];
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
            v16 xv = v16_load_tail(xr[i], c, cols - c);
            for (int j = 0; j < RB; j++) acc[i][j] += xv * wv[j];
        }
    }
    for (int i = 0; i < TB; i++)
        for (int j = 0; j < RB; j++) res[i * RB + j] = v16_sum(acc[i][j]);
}

// One instance per (dtype, shape) so the accumulators live in registers. Decode (one token)
// runs 8 rows at once: 8 independent fma chains hide the fma latency while streaming W.
// Prefill runs up to PF_TB tokens x PF_RB rows: 25 accumulators, 5 weight vectors and one x
// vector fit the 32 AVX-512 registers. 5 x 5 measured best among 4x4 (90 GFLOP/s on one
// core), 6x4, 8x3, 3x7, 3x8, 4x6 (140) and 5x5 (165) for BF16 4096 x 4096, n = 64.
#define PF_TB 5
#define PF_RB 5
typedef void (*tile_fn)(float *, const float *const *, const void *const *, int64_t);
#define TILE_FN(TB, RB, DT, SUF) \
    static void tile_##TB##x##RB##_##SUF(float *r, const float *const *x, const void *const *w, int64_t c) { tile(TB, RB, DT, r, x, w, c); }
TILE_FN(1, 8, DT_F32, f32) TILE_FN(1, 5, DT_F32, f32) TILE_FN(2, 5, DT_F32, f32) TILE_FN(3, 5, DT_F32, f32) TILE_FN(4, 5, DT_F32, f32) TILE_FN(5, 5, DT_F32, f32)
TILE_FN(1, 8, DT_BF16, bf16) TILE_FN(1, 5, DT_BF16, bf16) TILE_FN(2, 5, DT_BF16, bf16) TILE_FN(3, 5, DT_BF16, bf16) TILE_FN(4, 5, DT_BF16, bf16) TILE_FN(5, 5, DT_BF16, bf16)
TILE_FN(1, 8, DT_F16, f16) TILE_FN(1, 5, DT_F16, f16) TILE_FN(2, 5, DT_F16, f16) TILE_FN(3, 5, DT_F16, f16) TILE_FN(4, 5, DT_F16, f16) TILE_FN(5, 5, DT_F16, f16)
// [dtype][0]: decode 1 x 8; [dtype][t]: t tokens x PF_RB rows
static const tile_fn tiles[3][PF_TB + 1] = {
    {tile_1x8_f32, tile_1x5_f32, tile_2x5_f32, tile_3x5_f32, tile_4x5_f32, tile_5x5_f32},
    {tile_1x8_bf16, tile_1x5_bf16, tile_2x5_bf16, tile_3x5_bf16, tile_4x5_bf16, tile_5x5_bf16},
    {tile_1x8_f16, tile_1x5_f16, tile_2x5_f16, tile_3x5_f16, tile_4x5_f16, tile_5x5_f16},
};

// ---------------------------------------------------------------------------- row ranges
// Tokens are taken TOKEN_TILE at a time so that the x rows of a tile stay in cache while
// the rows of W pass by; each W row is read once per token tile.
#define TOKEN_TILE (4 * PF_TB)

void cpu_matmul_rows(float *out, int64_t ldo, const float *x, int64_t ldx, int64_t n,
                     const weight_t *w, int64_t r0, int64_t r1) {
    const char *wd = w->data;
    size_t wstride = (size_t)w->ld * dtype_size(w->dtype);
    int64_t cols = w->cols;
    int dt = (int)w->dtype;
    // A short last block reuses its last row (or token) and drops the extra results, so one
    // tile shape serves every size.
    int rb = n == 1 ? 8 : PF_RB;
    for (int64_t t0 = 0; t0 < n; t0 += TOKEN_TILE) {
        int64_t t1 = t0 + TOKEN_TILE < n ? t0 + TOKEN_TILE : n;
        for (int64_t r = r0; r < r1; r += rb) {
            int nr = r1 - r < rb ? (int)(r1 - r) : rb;
            const void *wr[8];
            for (int j = 0; j < rb; j++) wr[j] = wd + (size_t)(r + (j < nr ? j : nr - 1)) * wstride;
            for (int64_t t = t0; t < t1; t += PF_TB) {
                int nt = t1 - t < PF_TB ? (int)(t1 - t) : PF_TB;
                const float *xr[PF_TB];
                for (int i = 0; i < nt; i++) xr[i] = x + (size_t)(t + i) * (size_t)ldx;
                float res[64];
                tiles[dt][n == 1 ? 0 : nt](res, xr, wr, cols);
                for (int i = 0; i < nt; i++)
                    for (int j = 0; j < nr; j++) out[(size_t)(t + i) * (size_t)ldo + (size_t)(r - r0 + j)] = res[i * rb + j];
            }
        }
    }
}

// ---------------------------------------------------------------------------- the op
// Rows are split in chunks of ROW_CHUNK handed out dynamically (the 2-core containers are
// shared, so a static split waits on the slowest core); the split cannot change results.
#define ROW_CHUNK 40   // a multiple of both tile heights (8 and 5)

void cpu_matmul(backend *be, float *out, const float *x, const weight_t *w, int n) {
    if (n <= 0 || w->rows <= 0) return;
    int64_t rows = w->rows, chunks = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(cpu_threads(be)) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t r0 = ch * ROW_CHUNK, r1 = r0 + ROW_CHUNK < rows ? r0 + ROW_CHUNK : rows;
        cpu_matmul_rows(out + r0, rows, x, w->cols, n, w, r0, r1);
    }
}
