// A small explicit PRNG (splitmix64) so that every seeded choice (routers, dropped neurons,
// synthetic weights, sampling) is reproducible across machines and ranks.
#pragma once
#include <math.h>
#include <stdint.h>

typedef struct { uint64_t state; } rng_t;

static inline uint64_t rng_next(rng_t *r) {
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

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
