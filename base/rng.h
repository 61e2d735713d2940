// A small explicit PRNG (splitmix64) so that every seeded choice (routers, dropped neurons,
// synthetic weights, sampling) is reproducible across machines and ranks.
#pragma once
#include <math.h>
#include <stdint.h>

typedef struct { uint64_t state; } rng_t;

#define RNG_GAMMA 0x9e3779b97f4a7c15ull   // splitmix64's state increment

// splitmix64's output function: a bijective mix of a 64-bit state.
static inline uint64_t rng_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rng_next(rng_t *r) { return rng_mix(r->state += RNG_GAMMA); }

// The value the (i+1)-th rng_next returns for a stream whose state starts at seed, without
// stepping through the first i: element i of the stream is a pure function of (seed, i), so
// pieces of a long stream can be filled independently (by threads, in any order) with the
// values one sequential pass would give.
static inline uint64_t rng_at(uint64_t seed, uint64_t i) { return rng_mix(seed + (i + 1) * RNG_GAMMA); }

// A generator standing at element i of that stream: its rng_next calls return rng_at(seed, i),
// rng_at(seed, i + 1), ... Filling a run of elements this way saves rng_at's multiply.
static inline rng_t rng_from(uint64_t seed, uint64_t i) { return (rng_t){seed + i * RNG_GAMMA}; }

// A seed for a sub-stream (layer, expert, ...) derived from a parent seed.
static inline uint64_t rng_derive(uint64_t seed, uint64_t a, uint64_t b) {
    rng_t r = { seed ^ (a * 0xd1b54a32d192ed03ull) ^ (b * 0x8cb92ba72f3d8dd7ull) };
    return rng_next(&r);
}

static inline double rng_uniform(rng_t *r) {       // [0, 1) with 53 random bits
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static inline double rng_normal(rng_t *r) {        // Box-Muller, one value per call
    double u = rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

// A cheap bell-shaped draw for filling gigabytes of weights (rng_normal's log and cos cost
// more than the disk write): the sum of the four 16-bit fields of x, each uniform on
// 0..65535, centred. Irwin-Hall with 4 terms in units of 2^-16: an integer in
// [-131070, 131070], mean 0, standard deviation RNG_IRWIN_HALL4_STD units (about
// 65536/sqrt(3)), so never more than 2 sqrt(3) = 3.46 std from 0; excess kurtosis -0.3 (a
// normal's is 0). Integer arithmetic only: the same value on every machine and vector width.
#define RNG_IRWIN_HALL4_STD 37837.22723720648   // sqrt((65536^2 - 1) / 3)
static inline int32_t rng_irwin_hall4(uint64_t x) {
    uint64_t pairs = (x & 0x0000ffff0000ffffull) + ((x >> 16) & 0x0000ffff0000ffffull);
    return (int32_t)((uint32_t)pairs + (uint32_t)(pairs >> 32)) - 131070;
}
