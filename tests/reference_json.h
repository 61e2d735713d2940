// What the tests that check llamoe against a JSON reference file share: reading ids, the first
// greedy mismatch, and the largest difference between a dumped logits row and a reference row.
#pragma once
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>

#include "base/common.h"

typedef struct { int passed, failed; } tally;

static inline int json_ids(json_object *a, int32_t *out, int cap) {
    int n = (int)json_object_array_length(a);
    CHECK(n <= cap);
    for (int i = 0; i < n; i++) out[i] = json_object_get_int(json_object_array_get_idx(a, i));
    return n;
}

// The first index where got differs from want, -1 when they are the same sequence.
static inline int first_mismatch(const int32_t *got, int n_got, const int32_t *want, int n_want) {
    for (int i = 0; i < n_got && i < n_want; i++)
        if (got[i] != want[i]) return i;
    return n_got == n_want ? -1 : (n_got < n_want ? n_got : n_want);
}

// max |dump row `row` - ref| over a vocab-sized row (ref: a JSON array of V numbers), folded
// into max_diff; a NaN counts as over. got: V floats of scratch.
static inline double dump_row_max_diff(FILE *dump, long row, int V, json_object *ref, float *got, double max_diff) {
    CHECK((int)json_object_array_length(ref) == V);
    CHECK(row >= 0 && fseek(dump, row * V * (long)sizeof(float), SEEK_SET) == 0);
    CHECK(fread(got, sizeof(float), (size_t)V, dump) == (size_t)V);
    for (int i = 0; i < V; i++) {
        double d = fabs((double)got[i] - json_object_get_double(json_object_array_get_idx(ref, i)));
        if (!(d <= max_diff)) max_diff = d;
    }
    return max_diff;
}
