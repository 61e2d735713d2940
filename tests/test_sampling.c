// sample_token as a distribution: on fixed logits at temperatures 0.5, 1 and 2 and top-p 0.9
// and 1, the frequencies of many seeded draws must match softmax(logits / T) renormalised over
// the nucleus (the smallest set of most likely tokens whose mass reaches top-p), by a
// chi-square test, and no token outside the nucleus may ever be drawn. The seed is fixed, so
// the test is deterministic; the threshold is the chi-square quantile for a false alarm
// probability of 1e-6, so another seed would pass too. Then: the same seed gives the same
// draws, another seed other draws, and temperature 0 is the argmax with ties to the lower id.
//   test_sampling SOURCE_DIR
#include "runtime/generate.h"

#include <math.h>
#include <string.h>

#define V 10
#define DRAWS 200000

// Unsorted, with a tie (ids 3 and 8), a range small enough that every token is drawn often at
// T = 0.5, and nucleus edges well away from 0.9 (checked below).
static const float LOGITS[V] = {0.3f, 2.0f, -0.4f, 1.2f, 0.9f, 1.5f, -1.0f, 0.0f, 1.2f, 0.6f};

// The expected distribution in double: softmax(logits / T), the nucleus, renormalised.
// Returns the nucleus size; in_nucleus[i] says whether token i may be drawn.
static int expected(float temp, float top_p, double *p, int *in_nucleus) {
    double maxl = -INFINITY, z = 0;
    for (int i = 0; i < V; i++) maxl = fmax(maxl, LOGITS[i]);
    for (int i = 0; i < V; i++) z += p[i] = exp((LOGITS[i] - maxl) / temp);
    for (int i = 0; i < V; i++) { p[i] /= z; in_nucleus[i] = 1; }
    if (top_p >= 1.0f) return V;
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 1; i < V; i++)   // insertion sort: descending probability, ties to the lower id
        for (int j = i; j > 0 && (p[order[j]] > p[order[j - 1]] ||
                                  (p[order[j]] == p[order[j - 1]] && order[j] < order[j - 1])); j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    double cum = 0, before = 0;
    int n = 0;
    while (n < V && cum < top_p) { before = cum; cum += p[order[n++]]; }
    // The data must keep the edge clear of float rounding, or the nucleus would be ambiguous.
    if (!(before < top_p - 1e-3 && cum > top_p + 1e-3)) die("test data: nucleus edge too close to top-p %g at T %g", top_p, temp);
    for (int i = 0; i < V; i++) in_nucleus[i] = 0;
    for (int k = 0; k < n; k++) in_nucleus[order[k]] = 1;
    for (int i = 0; i < V; i++) p[i] = in_nucleus[i] ? p[i] / cum : 0;
    return n;
}

// Upper quantile of chi-square with df degrees of freedom for tail probability 1e-6
// (Wilson-Hilferty; z = 4.753 is the normal quantile of 1 - 1e-6).
static double chi2_limit(int df) {
    double a = 2.0 / (9.0 * df);
    return df * pow(1.0 - a + 4.753 * sqrt(a), 3);
}

static int check_distribution(float temp, float top_p, uint64_t seed) {
    double p[V];
    int in_nucleus[V], counts[V] = {0};
    int n = expected(temp, top_p, p, in_nucleus);
    prob_index scratch[V];
    rng_t rng = {seed};
    for (int d = 0; d < DRAWS; d++) {
        int32_t t = sample_token(LOGITS, V, temp, top_p, &rng, scratch);
        if (t < 0 || t >= V) { fprintf(stderr, "FAIL T %g top-p %g: drew id %d of a vocab of %d\n", temp, top_p, t, V); return 1; }
        counts[t]++;
    }
    double chi2 = 0;
    int outside = 0;
    for (int i = 0; i < V; i++) {
        if (!in_nucleus[i]) { outside += counts[i]; continue; }
        double e = p[i] * DRAWS;   // every expected count is above 200 with these logits
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    double limit = chi2_limit(n - 1);
    int ok = outside == 0 && chi2 <= limit;
    printf("T %-3g top-p %-3g nucleus %2d/%d  chi2 %9.2f (df %d, limit %.2f)  drawn outside the nucleus %d  %s\n",
           temp, top_p, n, V, chi2, n - 1, limit, outside, ok ? "ok" : "FAIL");
    if (!ok) {
        fprintf(stderr, "FAIL T %g top-p %g: token: drawn / expected\n", temp, top_p);
        for (int i = 0; i < V; i++) fprintf(stderr, "  %d: %d / %.0f\n", i, counts[i], p[i] * DRAWS);
    }
    return !ok;
}

// Same seed, same draws; another seed, other draws (1000 draws: equal by chance is impossible).
static int check_seeds(void) {
    int32_t a[1000], b[1000], c[1000];
    prob_index scratch[V];
    rng_t ra = {7}, rb = {7}, rc = {8};
    for (int i = 0; i < 1000; i++) {
        a[i] = sample_token(LOGITS, V, 1.0f, 0.9f, &ra, scratch);
        b[i] = sample_token(LOGITS, V, 1.0f, 0.9f, &rb, scratch);
        c[i] = sample_token(LOGITS, V, 1.0f, 0.9f, &rc, scratch);
    }
    int ok = !memcmp(a, b, sizeof a) && memcmp(a, c, sizeof a);
    printf("seeds: same seed same draws, other seed other draws  %s\n", ok ? "ok" : "FAIL");
    return !ok;
}

// Temperature 0: the argmax, ties to the lower id, whatever top-p and the generator say.
static int check_greedy(void) {
    enum { BIG = 128256 };
    float *l = xmalloc(BIG * sizeof(float));
    prob_index *scratch = xmalloc(BIG * sizeof(prob_index));
    rng_t rng = {1};
    int bad = 0;
    for (int i = 0; i < BIG; i++) l[i] = (float)((i * 7919) % 1000) / 100.0f - 5.0f;   // max 4.99 at many ids
    int32_t want = 0;
    for (int i = 1; i < BIG; i++) if (l[i] > l[want]) want = i;
    struct { const char *what; const float *logits; int n; float top_p; int32_t want; } cases[] = {
        {"tie at the max (ids 2, 6)", (const float[]){0.5f, 1.0f, 3.0f, -2.0f, 0.0f, 2.5f, 3.0f}, 7, 1.0f, 2},
        {"all equal", (const float[]){1.0f, 1.0f, 1.0f, 1.0f}, 4, 1.0f, 0},
        {"max last", (const float[]){-1.0f, -0.5f, -0.25f, 7.0f}, 4, 1.0f, 3},
        {"-inf entries", (const float[]){-INFINITY, -3.0f, -INFINITY, -3.0f}, 4, 1.0f, 1},
        {"top-p 0.5 ignored", (const float[]){0.5f, 1.0f, 3.0f, -2.0f, 0.0f, 2.5f, 3.0f}, 7, 0.5f, 2},
        {"vocab 128256, the max at 128 ids", l, BIG, 1.0f, want},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int32_t got = sample_token(cases[c].logits, cases[c].n, 0.0f, cases[c].top_p, &rng, scratch);
        printf("temperature 0: %-36s -> %6d (want %6d)  %s\n", cases[c].what, got, cases[c].want,
               got == cases[c].want ? "ok" : "FAIL");
        bad += got != cases[c].want;
    }
    free(l);
    free(scratch);
    return bad != 0;
}

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    int failed = 0;
    const float temps[] = {0.5f, 1.0f, 2.0f}, top_ps[] = {0.9f, 1.0f};
    for (int t = 0; t < 3; t++)
        for (int p = 0; p < 2; p++) failed += check_distribution(temps[t], top_ps[p], 1000 + 10 * t + p);
    failed += check_seeds();
    failed += check_greedy();
    printf("sampling: %d failed\n", failed);
    return failed ? 1 : 0;
}
