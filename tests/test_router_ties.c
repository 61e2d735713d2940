// The router's tie rule on hand-made logits whose answers are written out below: softmax, keep
// the top k with ties to the lower expert index (at the top and at the cut), renormalise over
// the kept ones, write them in ascending expert order. test_ops compares router_topk with a
// reference on random ties; these vectors state the rule itself.
//   test_router_ties SOURCE_DIR
#include "kernels/backend.h"

#include <math.h>
#include <string.h>

typedef struct {
    const char *what;
    int n_experts, k;
    float logits[16];
    int32_t want[16];   // the kept experts, ascending
} router_case;

static const router_case cases[] = {
    {"all equal, k 2 of 8", 8, 2, {0, 0, 0, 0, 0, 0, 0, 0}, {0, 1}},
    {"three tied at the top, k 2", 8, 2, {1, 3, 3, 3, 0, 2, 0, 1}, {1, 2}},
    {"one top, then a tie at the cut", 8, 3, {0, 0, 2, 0, 0, 0, 0, 0}, {0, 1, 2}},
    {"tie of the first and last, k 1", 8, 1, {5, 1, 1, 1, 1, 1, 1, 5}, {0}},
    {"tie of the last two, k 1", 8, 1, {0, 1, 2, 3, 4, 5, 6, 6}, {6}},
    {"every expert kept", 4, 4, {0.5f, 0.5f, 0.5f, 0.5f}, {0, 1, 2, 3}},
    {"six tied of 16, k 4", 16, 4, {1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1}, {0, 3, 6, 9}},
    {"tie at the cut behind a clear top two", 16, 3, {0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0}, {0, 5, 10}},
};

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    backend *be = backend_cpu_new(&(backend_options){.threads = 1});
    int failed = 0, n = (int)(sizeof cases / sizeof cases[0]);
    for (int c = 0; c < n; c++) {
        const router_case *rc = &cases[c];
        int32_t expert[16];
        float weight[16];
        be->router_topk(be, expert, weight, rc->logits, 1, rc->n_experts, rc->k);
        // The weights: exp(l_e) / sum over the kept ones, in double.
        double z = 0, worst = 0;
        for (int j = 0; j < rc->k; j++) z += exp(rc->logits[rc->want[j]]);
        for (int j = 0; j < rc->k; j++) {
            double d = fabs(weight[j] - exp(rc->logits[rc->want[j]]) / z);
            worst = d > worst ? d : worst;
        }
        int ok = !memcmp(expert, rc->want, sizeof(int32_t) * rc->k) && worst <= 1e-6;
        printf("%-40s experts", rc->what);
        for (int j = 0; j < rc->k; j++) printf(" %d", expert[j]);
        printf("  weights max |diff| %.1e  %s\n", worst, ok ? "ok" : "FAIL");
        if (!ok) {
            fprintf(stderr, "FAIL %s: want experts", rc->what);
            for (int j = 0; j < rc->k; j++) fprintf(stderr, " %d", rc->want[j]);
            fprintf(stderr, "\n");
        }
        failed += !ok;
    }
    backend_free(be);
    printf("router ties: %d cases, %d failed\n", n, failed);
    return failed ? 1 : 0;
}
