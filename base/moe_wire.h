// The MoE exchange's message format, shared by the kernels that write and read messages
// (kernels/backend.h: moe_pack, moe_group) and the exchange that sizes and moves them
// (parallel/dispatch.h).
//
// In the dispatch, a rank sends each peer one message: a header (int32 rows, int32 pairs,
// int32 d, int32 zero: 16 bytes), the rows of its tokens that have an expert
// on that peer (each token once, in token order, d floats each), then one (int32 row, int32
// local expert) pair per (token, expert) in (token, j) order, 8-byte aligned; messages start
// 16-byte aligned (moe_message_bytes rounds up). The combine returns one row of d
// floats per pair, in the order of the pairs. Where each message and its pairs start is
// chosen by the exchange (exact sizes from the counts, or fixed capacities for the decode
// exchange) and travels as a moe_layout.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define MOE_MAX_RANKS 256     // the most ranks one exchange spans (tables travel by value)
#define MOE_HEADER_BYTES 16
#define MOE_PAIR_BYTES 8

// Byte offsets of each peer's message in a buffer, and of its pairs from the message start.
typedef struct {
    size_t msg[MOE_MAX_RANKS];
    size_t pairs[MOE_MAX_RANKS];
} moe_layout;

// Where the pairs of a message with room for `rows` rows of d floats start (8-byte aligned),
// and the bytes of the whole message with room for `pairs` pairs (a multiple of 16, so the
// next message's header is aligned too).
static inline size_t moe_pairs_offset(int64_t rows, int d) {
    return (MOE_HEADER_BYTES + (size_t)rows * (size_t)d * sizeof(float) + 7) / 8 * 8;
}
static inline size_t moe_message_bytes(int64_t rows, int64_t pairs, int d) {
    return (moe_pairs_offset(rows, d) + (size_t)pairs * MOE_PAIR_BYTES + 15) / 16 * 16;
}
