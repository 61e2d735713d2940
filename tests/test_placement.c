// Expert placement: block sizes, owners and the E < P error, case by case from a table.
#include "parallel/placement.h"

#include <string.h>

typedef struct {
    int n_experts, n_ranks;
    int counts[8];          // expected experts per rank; unused when error is set
    const char *error;      // expected substring of the error, or NULL
} placement_case;

static const placement_case cases[] = {
    {8, 3, {3, 3, 2}, NULL},
    {1, 1, {1}, NULL},
    {7, 4, {2, 2, 2, 1}, NULL},
    {8, 8, {1, 1, 1, 1, 1, 1, 1, 1}, NULL},
    {8, 1, {8}, NULL},
    {9, 2, {5, 4}, NULL},
    {2, 3, {0}, "cannot place 2 experts on 3 ranks: every rank must own at least one"},
    {0, 1, {0}, "cannot place 0 experts"},
    {4, 0, {0}, "cannot place experts on 0 ranks"},
};

int main(void) {
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const placement_case *tc = &cases[i];
        expert_placement p;
        llamoe_err err = {{0}};
        int rc = placement_init(&p, tc->n_experts, tc->n_ranks, &err);
        if (tc->error) {
            if (rc == 0 || !strstr(err.msg, tc->error)) {
                fprintf(stderr, "E=%d P=%d: expected error '%s', got rc %d '%s'\n",
                        tc->n_experts, tc->n_ranks, tc->error, rc, err.msg);
                failures++;
            }
            continue;
        }
        if (rc != 0) {
            fprintf(stderr, "E=%d P=%d: unexpected error: %s\n", tc->n_experts, tc->n_ranks, err.msg);
            failures++;
            continue;
        }
        // Counts as in the table, blocks contiguous and covering 0..E-1, owner() consistent.
        int next = 0;
        for (int r = 0; r < tc->n_ranks; r++) {
            int first = placement_first(&p, r), count = placement_count(&p, r);
            if (count != tc->counts[r] || first != next) {
                fprintf(stderr, "E=%d P=%d rank %d: first %d count %d, expected first %d count %d\n",
                        tc->n_experts, tc->n_ranks, r, first, count, next, tc->counts[r]);
                failures++;
            }
            for (int e = first; e < first + count; e++)
                if (placement_owner(&p, e) != r) {
                    fprintf(stderr, "E=%d P=%d: owner(%d) = %d, expected %d\n",
                            tc->n_experts, tc->n_ranks, e, placement_owner(&p, e), r);
                    failures++;
                }
            next = first + count;
        }
        if (next != tc->n_experts) {
            fprintf(stderr, "E=%d P=%d: blocks cover %d experts\n", tc->n_experts, tc->n_ranks, next);
            failures++;
        }
    }
    // Exhaustively: every (E, P) with P <= E <= 64 tiles the experts.
    for (int E = 1; E <= 64; E++)
        for (int P = 1; P <= E; P++) {
            expert_placement p;
            if (placement_init(&p, E, P, NULL)) { failures++; continue; }
            for (int e = 0; e < E; e++) {
                int r = placement_owner(&p, e);
                if (r < 0 || r >= P || e < placement_first(&p, r) || e >= placement_first(&p, r) + placement_count(&p, r)) {
                    fprintf(stderr, "E=%d P=%d: expert %d has owner %d outside its block\n", E, P, e, r);
                    failures++;
                }
            }
        }
    if (failures) { fprintf(stderr, "test_placement: %d failures\n", failures); return 1; }
    printf("test_placement: ok\n");
    return 0;
}
