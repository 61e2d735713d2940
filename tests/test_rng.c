// base/rng.h: rng_at and rng_from are counter-based views of rng_next's stream, the existing draws keep
// their values, and rng_irwin_hall4 has the range and moments its comment promises.
// Usage: test_rng
#include "base/common.h"
#include "base/rng.h"

#include <math.h>

static int passed, failed;

#define EXPECT(cond, ...) do { \
    if (cond) passed++; \
    else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

int main(void) {
    // splitmix64's published first outputs for seed 0 and 1234567 pin rng_next (and with it
    // rng_uniform, rng_normal and rng_derive, which other code depends on).
    rng_t r = {0};
    EXPECT(rng_next(&r) == 0xe220a8397b1dcdafull, "splitmix64(0) first output");
    r.state = 1234567;
    uint64_t first = rng_next(&r);
    EXPECT(first == 6457827717110365317ull, "splitmix64(1234567) first output %llu", (unsigned long long)first);

    // rng_at(seed, i) is the (i+1)-th rng_next from seed, in any order.
    for (uint64_t seed = 0; seed < 4; seed++) {
        rng_t s = {seed * 0x1234567ull};
        int same = 1;
        for (uint64_t i = 0; i < 1000; i++) same &= rng_next(&s) == rng_at(seed * 0x1234567ull, i);
        EXPECT(same, "rng_at and rng_next agree for seed %llu", (unsigned long long)seed);
        rng_t from = rng_from(seed * 0x1234567ull, 500);
        for (uint64_t i = 500; i < 600; i++) same &= rng_next(&from) == rng_at(seed * 0x1234567ull, i);
        EXPECT(same, "rng_from(seed, 500) continues at element 500 for seed %llu", (unsigned long long)seed);
    }

    // Irwin-Hall(4): the extremes come from all-zero and all-one fields; centred; moments of
    // 2^22 draws within 5 standard errors of mean 0, std RNG_IRWIN_HALL4_STD, kurtosis 2.7.
    EXPECT(rng_irwin_hall4(0) == -131070 && rng_irwin_hall4(UINT64_MAX) == 131070, "extremes");
    EXPECT(rng_irwin_hall4(0x8000800080007ffeull) == 0, "centre");
    const int n = 1 << 22;
    double s1 = 0, s2 = 0, s4 = 0;
    int lo = 0, hi = 0;
    for (int i = 0; i < n; i++) {
        int32_t v = rng_irwin_hall4(rng_at(99, (uint64_t)i));
        double z = v / RNG_IRWIN_HALL4_STD;
        s1 += z, s2 += z * z, s4 += z * z * z * z;
        lo = v < lo ? v : lo, hi = v > hi ? v : hi;
    }
    double mean = s1 / n, var = s2 / n, kurt = s4 / n / (var * var);
    EXPECT(fabs(mean) < 5 / sqrt(n), "mean %g", mean);
    EXPECT(fabs(var - 1) < 5 * sqrt(1.7 / n), "variance %g", var);
    EXPECT(fabs(kurt - 2.7) < 0.02, "kurtosis %g", kurt);
    EXPECT(lo >= -131070 && hi <= 131070 && hi - lo > 200000, "range [%d, %d]", lo, hi);
    printf("test_rng: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
