// The balancer on a measured load profile: for each number of ranks P and of redundant
// experts R, the rank imbalance (max / mean of the load each rank's experts carry, each
// expert's load split evenly over its copies) per layer, contiguous against balanced, and the
// time the algorithm takes. No ranks run: this is the placement's expected balance on the
// profile it was made from (llamoe-ep --stats measures the real one).
//   bench_balance -m DIR --load-profile FILE [--ranks 2,3,4,8] [--redundant 0,P,2P] [--json FILE]
// R values: integers, or P / 2P for "as many as ranks" / "twice as many".
#include "parallel/balance.h"
#include "runtime/placement_io.h"

#include <json-c/json.h>
#include <string.h>

static int parse_list(const char *s, char out[][16], int max) {
    int n = 0;
    while (*s && n < max) {
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= 16) die("bench_balance: bad list entry in %s", s);
        memcpy(out[n], s, len);
        out[n++][len] = 0;
        s += len + (s[len] == ',');
    }
    return n;
}

static int redundant_of(const char *spec, int P) {
    if (!strcmp(spec, "P")) return P;
    if (!strcmp(spec, "2P")) return 2 * P;
    char *end;
    long v = strtol(spec, &end, 10);
    if (*end || v < 0 || v > 1 << 20) die("bench_balance: --redundant %s: expected an integer, P or 2P", spec);
    return (int)v;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *profile = NULL, *ranks = "2,3,4,8", *redundant = "0,P,2P", *json = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--load-profile")) profile = argv[i + 1];
        else if (!strcmp(argv[i], "--ranks")) ranks = argv[i + 1];
        else if (!strcmp(argv[i], "--redundant")) redundant = argv[i + 1];
        else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
        else die("bench_balance: unknown option %s", argv[i]);
    }
    if (!dir || !profile) die("usage: bench_balance -m DIR --load-profile FILE [--ranks 2,3,4,8] [--redundant 0,P,2P] [--json FILE]");
    llamoe_err err;
    llama_config cfg;
    if (config_load(&cfg, dir, &err) != 0) die("%s", err.msg);
    // The profile says how many experts it counted; the model must agree on the rest.
    char text_e[16][16], text_r[16][16];
    int n_p = parse_list(ranks, text_e, 16), n_r = parse_list(redundant, text_r, 16);
    json_object *root = json_object_from_file(profile), *field = NULL;
    if (!root || !json_object_object_get_ex(root, "experts", &field) || !json_object_is_type(field, json_type_int))
        die("%s: not a load profile with an experts count", profile);
    int E = json_object_get_int(field);
    json_object_put(root);
    int64_t *load;
    if (load_profile_read(profile, &cfg, E, &load, &err) != 0) die("%s", err.msg);
    int L = cfg.n_layers;
    FILE *out = json ? fopen(json, "w") : NULL;
    if (json && !out) die("%s: cannot create", json);
    if (out) fprintf(out, "{\"profile\": \"%s\", \"layers\": %d, \"experts\": %d, \"points\": [", profile, L, E);
    printf("profile %s: %d layers of %d experts\n", profile, L, E);
    printf("%4s %4s %6s %12s %12s %12s %12s %10s\n", "P", "R", "slots", "contig mean", "contig worst", "bal. mean",
           "bal. worst", "us/layer");
    int first = 1;
    for (int a = 0; a < n_p; a++) {
        int P = atoi(text_e[a]);
        if (P < 1 || P > E) die("bench_balance: --ranks %s: expected 1 .. %d", text_e[a], E);
        for (int b = 0; b < n_r; b++) {
            int R = redundant_of(text_r[b], P);
            placement_table flat, bal;
            if (placement_table_contiguous(&flat, L, E, P, &err) != 0) die("%s", err.msg);
            if (placement_table_alloc(&bal, L, E, E + R, P, &err) != 0) {
                printf("%4d %4d: %s\n", P, R, err.msg);
                placement_table_free(&flat);
                continue;
            }
            double t0 = now_seconds();
            int reps = 0;
            do {   // at least 20 ms of work for the time per layer
                balance_table(&bal, load, NULL);
                reps++;
            } while (now_seconds() - t0 < 0.02);
            double us = 1e6 * (now_seconds() - t0) / reps / L;
            if (placement_table_check(&bal, &err) != 0) die("bench_balance: %s", err.msg);
            double cm = 0, cw = 0, bm = 0, bw = 0;
            if (out) fprintf(out, "%s\n  {\"ranks\": %d, \"redundant\": %d, \"contiguous\": [", first ? "" : ",", P, R);
            first = 0;
            for (int l = 0; l < L; l++) {
                double c = balance_imbalance(placement_layer(&flat, l), load + (size_t)l * E, E, E, P);
                cm += c / L;
                cw = c > cw ? c : cw;
                if (out) fprintf(out, "%s%.6f", l ? ", " : "", c);
            }
            if (out) fprintf(out, "], \"balanced\": [");
            for (int l = 0; l < L; l++) {
                double v = balance_imbalance(placement_layer(&bal, l), load + (size_t)l * E, E, E + R, P);
                bm += v / L;
                bw = v > bw ? v : bw;
                if (out) fprintf(out, "%s%.6f", l ? ", " : "", v);
            }
            if (out) fprintf(out, "], \"us_per_layer\": %.3f}", us);
            printf("%4d %4d %6d %12.3f %12.3f %12.3f %12.3f %10.1f\n", P, R, E + R, cm, cw, bm, bw, us);
            placement_table_free(&flat);
            placement_table_free(&bal);
        }
    }
    if (out) {
        fprintf(out, "\n]}\n");
        fclose(out);
    }
    free(load);
    return 0;
}
