// matmul: out[n, rows] = x[n, cols] . W^T with W in F32, BF16 or F16 widened on the fly.
//
// Determinism: every output element is one dot product computed by one scheme (see
// cpu_internal.h): 16 lane accumulators over 16-column chunks in increasing order, fma,
// zero-padded tail, fixed reduction tree. Tiles of several tokens x several rows only decide
// which dot products run side by side (sharing loads), never how one is summed, so results
// do not depend on n, on a token's place in the batch, on threads or on the weight dtype.
#include "kernels/cpu/cpu_internal.h"

#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

// ---------------------------------------------------------------------------- widening
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint32_t v16u32 __attribute__((vector_size(64)));
typedef _Float16 v16f16 __attribute__((vector_size(32)));

// 16 weights from row w at column c as fp32. BF16 is the top half of an fp32, so a shift
// widens it; both conversions are exact, so F32 and BF16 files with equal values agree.
static inline __attribute__((always_inline)) v16 w_load(const void *w, dtype_t dt, int64_t c) {
    if (dt == DT_F32) return v16_load((const float *)w + c);
    if (dt == DT_BF16) {
#ifdef __AVX512F__   // one vpmovzxwd from memory and a shift (GCC's generic form can take four)
        __m256i b = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + c));
        return (v16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16);
#else

        v16u16 h;
        memcpy(&h, (const uint16_t *)w + c, sizeof h);
        v16u32 u = __builtin_convertvector(h, v16u32) << 16;
        return (v16)u;
#endif
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

// ---------------------------------------------------------------------------- decode
// One token: a GEMV bound by reading W once. 8 rows at a time: 8 independent fma chains
// share each x load and hide the fma latency while W streams by. Each row is also
// prefetched DC_AHEAD columns ahead: the hardware prefetcher stops at every 4 KB page (half
// a BF16 row at 4096 columns) and 8 streams restart it often; measured +5-10% per thread.
#define DC_RB 8
#define DC_AHEAD 256

static inline __attribute__((always_inline))
void gemv_rows(dtype_t dt, float *res, const float *x, const void *const *wr, int64_t cols) {
    v16 acc[DC_RB];
#pragma GCC unroll 8
    for (int j = 0; j < DC_RB; j++) acc[j] = (v16){0};
    int64_t c = 0;
    size_t es = dt == DT_F32 ? 4 : 2;
    for (; c + 4 * LANES <= cols; c += 4 * LANES) {   // 4 chunks: 128 B of BF16, 256 B of F32
#pragma GCC unroll 8
        for (int j = 0; j < DC_RB; j++)
            for (size_t b = 0; b < 4 * LANES * es; b += 64) __builtin_prefetch((const char *)wr[j] + (size_t)(c + DC_AHEAD) * es + b, 0, 3);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
            v16 xv = v16_load(x + c + u * LANES);
#pragma GCC unroll 8
            for (int j = 0; j < DC_RB; j++) acc[j] += xv * w_load(wr[j], dt, c + u * LANES);
        }
    }
    for (; c + LANES <= cols; c += LANES) {
        v16 xv = v16_load(x + c);
#pragma GCC unroll 8
        for (int j = 0; j < DC_RB; j++) acc[j] += xv * w_load(wr[j], dt, c);
    }
    if (c < cols) {
        v16 xv = v16_load_tail(x, c, cols - c);
        for (int j = 0; j < DC_RB; j++) acc[j] += xv * w_load_tail(wr[j], dt, c, cols - c);
    }
    for (int j = 0; j < DC_RB; j++) res[j] = v16_sum(acc[j]);
}

typedef void (*gemv_fn)(float *, const float *, const void *const *, int64_t);
static void gemv_f32(float *r, const float *x, const void *const *w, int64_t c) { gemv_rows(DT_F32, r, x, w, c); }
static void gemv_bf16(float *r, const float *x, const void *const *w, int64_t c) { gemv_rows(DT_BF16, r, x, w, c); }
static void gemv_f16(float *r, const float *x, const void *const *w, int64_t c) { gemv_rows(DT_F16, r, x, w, c); }
static const gemv_fn gemvs[3] = {gemv_f32, gemv_bf16, gemv_f16};   // indexed by dtype_t

static void matmul_decode(float *out, const float *x, const weight_t *w, int64_t r0, int64_t r1) {
    const char *wd = w->data;
    size_t wstride = (size_t)w->ld * dtype_size(w->dtype);
    for (int64_t r = r0; r < r1; r += DC_RB) {
        // A short last block reuses its last row and drops the extra results.
        int nr = r1 - r < DC_RB ? (int)(r1 - r) : DC_RB;
        const void *wr[DC_RB];
        for (int j = 0; j < DC_RB; j++) wr[j] = wd + (size_t)(r + (j < nr ? j : nr - 1)) * wstride;
        float res[DC_RB];
        gemvs[w->dtype](res, x, wr, w->cols);
        for (int j = 0; j < nr; j++) out[r - r0 + j] = res[j];
    }
}

// ---------------------------------------------------------------------------- prefill
// Several tokens: compute-bound. A tile is PF_TB tokens x PF_RB rows of dot products: 25
// accumulators, 5 weight vectors and one x vector fit the 32 AVX-512 registers, 25 fma per
// 10 loads (5 x 5 measured best among 4x4, 6x4, 8x3, 3x7, 4x6 for BF16 4096 x 4096).
//
// Columns go in blocks of PF_KB. For each block, the pass's PF_ROWS rows of W are widened to
// fp32 once (into L2) and each PF_TB-token group's x block is copied once to a 64-byte
// aligned buffer (in L1: a 64-byte load that straddles two cache lines costs two), then every
// (group, strip) tile runs over the block. Widening costs 1/(PF_TT / PF_TB) of what it would
// per tile. Between column blocks each tile's accumulators wait in memory and carry on where
// they stopped, so every lane's fma chain, and so every element, is exactly cpu_dot's.
#define PF_TB 5
#define PF_RB 5
#define PF_KB 512                   // columns per block
#define PF_TT 40                    // tokens per tile
#define PF_ROWS CPU_MATMUL_ROWS_MANY // rows per pass (a multiple of PF_RB)
#define PF_GROUPS (PF_TT / PF_TB)
#define PF_STRIPS (PF_ROWS / PF_RB)

// wb[j * PF_KB + c] = W[row j][c0 + c] as fp32 for c < len, zero up to the next multiple of 16.
static void widen_rows(float *wb, const void *const *wr, int nrows, dtype_t dt, int64_t c0, int64_t len) {
    for (int j = 0; j < nrows; j++) {
        float *row = wb + (size_t)j * PF_KB;
        int64_t c = 0;
        if (dt == DT_F32) for (; c + LANES <= len; c += LANES) v16_store(row + c, w_load(wr[j], DT_F32, c0 + c));
        else if (dt == DT_BF16) for (; c + LANES <= len; c += LANES) v16_store(row + c, w_load(wr[j], DT_BF16, c0 + c));
        else for (; c + LANES <= len; c += LANES) v16_store(row + c, w_load(wr[j], DT_F16, c0 + c));
        if (c < len) v16_store(row + c, w_load_tail(wr[j], dt, c0 + c, len - c));
    }
}

// acc[i * PF_RB + j] += xb[token i][..] . wb[row j][..] over steps 16-column chunks, lane by
// lane; both blocks are zero-padded to whole chunks, as cpu_dot pads its tail.
static inline __attribute__((always_inline))
void tile_block(int TB, v16 *acc, const float *xb, const float *wb, int64_t steps) {
    v16 a[PF_TB][PF_RB];
#pragma GCC unroll 8
    for (int i = 0; i < TB; i++)
#pragma GCC unroll 8
        for (int j = 0; j < PF_RB; j++) a[i][j] = acc[i * PF_RB + j];
    for (int64_t c = 0; c < steps * LANES; c += LANES) {
        v16 wv[PF_RB];
#pragma GCC unroll 8
        for (int j = 0; j < PF_RB; j++) wv[j] = v16_load(wb + j * PF_KB + c);
#pragma GCC unroll 8
        for (int i = 0; i < TB; i++) {
            v16 xv = v16_load(xb + i * PF_KB + c);
#pragma GCC unroll 8
            for (int j = 0; j < PF_RB; j++) a[i][j] += xv * wv[j];
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < TB; i++)
#pragma GCC unroll 8
        for (int j = 0; j < PF_RB; j++) acc[i * PF_RB + j] = a[i][j];
}

// One instance per group size so the accumulators live in registers.
typedef void (*tile_fn)(v16 *, const float *, const float *, int64_t);
#define TILE_FN(TB) static void tile_##TB(v16 *a, const float *x, const float *w, int64_t steps) { tile_block(TB, a, x, w, steps); }
TILE_FN(1) TILE_FN(2) TILE_FN(3) TILE_FN(4) TILE_FN(5)
static const tile_fn tiles[PF_TB + 1] = {NULL, tile_1, tile_2, tile_3, tile_4, tile_5};

// The cache lines of a block of rows (rows_left rows of `lines` lines, `stride` bytes apart),
// visited a few at a time between tiles: prefetched while the tiles compute, never so many
// at once that they wait for free fill buffers.
typedef struct { const char *row; size_t stride; int64_t lines, line, rows_left; } line_walk;

static inline line_walk line_walk_of(const void *first, size_t stride, int64_t rows, int64_t bytes) {
    return (line_walk){first, stride, (bytes + 63) / 64, 0, bytes > 0 ? rows : 0};
}
// k more lines into L1 (near: x, read by the next tiles) or into L2 (far: W's next block)
#define LINE_WALK_STEP(NAME, LOCALITY)                                              \
    static inline void NAME(line_walk *w, int64_t k) {                              \
        for (; k > 0 && w->rows_left > 0; k--) {                                    \
            __builtin_prefetch(w->row + w->line * 64, 0, LOCALITY);                 \
            if (++w->line == w->lines) { w->line = 0; w->row += w->stride; w->rows_left--; } \
        }                                                                           \
    }
LINE_WALK_STEP(prefetch_near, 3)
LINE_WALK_STEP(prefetch_far, 2)

// The thread's scratch: the widened rows (320 KB), the (group, strip) tiles' accumulators
// (410 KB) and a group's x block (10 KB).
_Static_assert((PF_ROWS * PF_KB + PF_TB * PF_KB) * sizeof(float) + PF_GROUPS * PF_STRIPS * PF_TB * PF_RB * sizeof(v16)
               <= CPU_MATMUL_SCRATCH, "matmul scratch too small");

static void matmul_prefill(float *out, int64_t ldo, const float *x, int64_t ldx, int64_t n,
                           const weight_t *w, int64_t r0, int64_t r1, void *scratch) {
    const char *wd = w->data;
    size_t wstride = (size_t)w->ld * dtype_size(w->dtype);
    int64_t cols = w->cols;
    v16 *acc = scratch;
    float *wb = (float *)(acc + PF_GROUPS * PF_STRIPS * PF_TB * PF_RB), *xb = wb + PF_ROWS * PF_KB;
    for (int64_t t0 = 0; t0 < n; t0 += PF_TT) {
        int64_t t1 = t0 + PF_TT < n ? t0 + PF_TT : n;
        for (int64_t rp = r0; rp < r1; rp += PF_ROWS) {
            int64_t rp1 = rp + PF_ROWS < r1 ? rp + PF_ROWS : r1;
            // A short strip (or group) repeats its last row (or token) and drops the extra
            // results, so one tile shape serves every size.
            int nrows = (int)(rp1 - rp), nstrips = (nrows + PF_RB - 1) / PF_RB;
            const void *wr[PF_ROWS];
            for (int j = 0; j < nstrips * PF_RB; j++) wr[j] = wd + (size_t)(rp + (j < nrows ? j : nrows - 1)) * wstride;
            for (int64_t c0 = 0; c0 < cols; c0 += PF_KB) {
                int64_t len = cols - c0 < PF_KB ? cols - c0 : PF_KB, steps = (len + LANES - 1) / LANES;
                int last = c0 + len == cols;
                widen_rows(wb, wr, nstrips * PF_RB, w->dtype, c0, len);
                // W's next column block goes to L2 while this block's tiles run.
                int64_t next_len = cols - c0 - len < PF_KB ? cols - c0 - len : PF_KB;
                size_t es = dtype_size(w->dtype);
                line_walk wnext = line_walk_of((const char *)wr[0] + (size_t)(c0 + len) * es, wstride, nrows, next_len * (int64_t)es);
                int64_t ntiles = (t1 - t0 + PF_TB - 1) / PF_TB * nstrips;
                int64_t wper = (wnext.rows_left * wnext.lines + ntiles - 1) / ntiles;
                for (int64_t t = t0, g = 0; t < t1; t += PF_TB, g++) {
                    int nt = t1 - t < PF_TB ? (int)(t1 - t) : PF_TB;
                    for (int i = 0; i < nt; i++) {
                        const float *xr = x + (size_t)(t + i) * (size_t)ldx + c0;
                        int64_t c = 0;
                        for (; c + LANES <= len; c += LANES) v16_store(xb + i * PF_KB + c, v16_load(xr + c));
                        if (c < len) v16_store(xb + i * PF_KB + c, v16_load_tail(xr, c, len - c));
                    }
                    // The next group's x block (the next column block's first group after
                    // the last) is fetched into L1 a few lines per tile while these compute.
                    int64_t tn = t + PF_TB < t1 ? t + PF_TB : t0, cn = t + PF_TB < t1 ? c0 : c0 + len;
                    int64_t nn = t + PF_TB < t1 ? (t1 - tn < PF_TB ? t1 - tn : PF_TB) : (t1 - t0 < PF_TB ? t1 - t0 : PF_TB);
                    int64_t nlen = cn < cols ? (cols - cn < PF_KB ? cols - cn : PF_KB) : 0;
                    line_walk xnext = line_walk_of(x + (size_t)tn * (size_t)ldx + cn, (size_t)ldx * sizeof(float), nn, nlen * (int64_t)sizeof(float));
                    int64_t xper = (xnext.rows_left * xnext.lines + nstrips - 1) / nstrips;
                    for (int s = 0; s < nstrips; s++) {
                        prefetch_near(&xnext, xper);
                        prefetch_far(&wnext, wper);
                        v16 *a = acc + (g * PF_STRIPS + s) * (PF_TB * PF_RB);
                        if (c0 == 0)
                            for (int k = 0; k < nt * PF_RB; k++) a[k] = (v16){0};
                        tiles[nt](a, xb, wb + (size_t)s * PF_RB * PF_KB, steps);
                        if (!last) continue;
                        int nr = nrows - s * PF_RB < PF_RB ? nrows - s * PF_RB : PF_RB;
                        for (int i = 0; i < nt; i++)
                            for (int j = 0; j < nr; j++)
                                out[(size_t)(t + i) * (size_t)ldo + (size_t)(rp - r0 + s * PF_RB + j)] = v16_sum(a[i * PF_RB + j]);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------- row ranges
void cpu_matmul_rows(float *out, int64_t ldo, const float *x, int64_t ldx, int64_t n,
                     const weight_t *w, int64_t r0, int64_t r1, void *scratch) {
    if (n == 1) matmul_decode(out, x, w, r0, r1);
    else matmul_prefill(out, ldo, x, ldx, n, w, r0, r1, scratch);
}

// ---------------------------------------------------------------------------- the op
// Rows are split in chunks handed out dynamically (the 2-core containers are shared, so a
// static split waits on the slowest core); the split cannot change results.
void cpu_matmul(backend *be, float *out, const float *x, const weight_t *w, int n) {
    if (n <= 0 || w->rows <= 0) return;
    int threads = cpu_threads(be);
    int64_t rows = w->rows, chunk = cpu_matmul_chunk(rows, n, threads), chunks = (rows + chunk - 1) / chunk;
    char *scratch = n == 1 ? NULL : cpu_thread_scratch(be, CPU_SCRATCH_MATMUL, threads, CPU_MATMUL_SCRATCH);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t r0 = ch * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        void *mine = scratch ? scratch + (size_t)omp_get_thread_num() * cpu_thread_stride(CPU_MATMUL_SCRATCH) : NULL;
        cpu_matmul_rows(out + r0, rows, x, w->cols, n, w, r0, r1, mine);
    }
}
