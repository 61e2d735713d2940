// Llama 3 RoPE frequencies against Hugging Face transformers: for each config of
// tests/data/rope_llama3/inv_freq.json (the real Llama 3.1 8B config, Llama 3.2's factor 32,
// the tiny test model), llamoe's config parser and rope_inv_freq must give transformers'
// float32 inverse frequencies in all three bands of the llama3 rule (kept, smoothed, divided).
//   test_rope_llama3 SOURCE_DIR
//
// Tolerance, relative, per frequency: llamoe evaluates the rule in double and rounds once
// (u/2, u = 2^-24); transformers evaluates it in float32: the power and the reciprocal (<= 3u),
// and in the smoothed band the wavelength, the smooth factor s and the blend f (1/8 + 7s/8)
// (s's absolute error of about 6u is amplified up to 7x where s is near 0, then a few more
// roundings): <= 48u in all. Measured worst: 4.7u. A band mistake changes a frequency by up
// to the factor (8 or 32).
#include "runtime/model.h"

#include <json-c/json.h>
#include <math.h>
#include <string.h>

#define TOL (48.0 / 16777216.0)

static int check_case(const char *src, json_object *cs) {
    const char *name = json_object_get_string(json_object_object_get(cs, "name"));
    json_object *path_obj, *inline_cfg, *want = json_object_object_get(cs, "inv_freq"),
                *band = json_object_object_get(cs, "band");
    char path[4096], *text;
    llamoe_err err;
    if (json_object_object_get_ex(cs, "config_path", &path_obj)) {
        snprintf(path, sizeof path, "%s/%s", src, json_object_get_string(path_obj));
        text = read_text_file(path, 1 << 20, NULL, &err);
        if (!text) die("%s", err.msg);
    } else {
        CHECK(json_object_object_get_ex(cs, "config", &inline_cfg));
        snprintf(path, sizeof path, "inv_freq.json: %s: config", name);
        text = xstrdup(json_object_to_json_string(inline_cfg));
    }
    llama_config c;
    if (config_parse(&c, path, text, &err) != 0) die("%s", err.msg);
    free(text);
    int half = c.head_dim / 2;
    if (!c.rope_llama3 || (int)json_object_array_length(want) != half || (int)json_object_array_length(band) != half)
        die("inv_freq.json: %s: not a llama3 rope config of head_dim %d", name, 2 * (int)json_object_array_length(want));

    float *got = xmalloc((size_t)half * sizeof(float));
    rope_inv_freq(&c, got);
    int counts[3] = {0, 0, 0}, bad = 0;
    double worst[3] = {0, 0, 0};
    static const char *bands[3] = {"kept", "smoothed", "divided"};
    for (int i = 0; i < half; i++) {
        const char *b = json_object_get_string(json_object_array_get_idx(band, i));
        int k = !strcmp(b, "kept") ? 0 : !strcmp(b, "smoothed") ? 1 : !strcmp(b, "divided") ? 2 : -1;
        if (k < 0) die("inv_freq.json: %s: band[%d] \"%s\" unknown", name, i, b);
        double ref = json_object_get_double(json_object_array_get_idx(want, i));
        double rel = fabs((double)got[i] - ref) / ref;
        counts[k]++;
        if (!(rel <= worst[k])) worst[k] = rel;
        if (!(rel <= TOL)) {
            if (bad++ < 4)
                fprintf(stderr, "FAIL %s: inv_freq[%d] (%s) = %.9g, transformers %.9g (relative %.2g, tol %.2g)\n",
                        name, i, b, got[i], ref, rel, TOL);
        }
    }
    for (int k = 0; k < 3; k++)
        printf("%-16s %-8s %3d frequencies, worst relative diff %.2g (%.1f u)\n", name, bands[k], counts[k],
               worst[k], worst[k] * 16777216.0);
    // The data must exercise every branch of the rule, or a mistake in one could pass.
    for (int k = 0; k < 3; k++)
        if (counts[k] == 0) { fprintf(stderr, "FAIL %s: no frequency in the %s band\n", name, bands[k]); bad++; }
    free(got);
    return bad;
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: test_rope_llama3 SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/rope_llama3/inv_freq.json", argv[1]);
    json_object *root = json_object_from_file(path), *cases;
    if (!root || !json_object_object_get_ex(root, "cases", &cases)) die("%s: cannot read", path);
    int failed = 0, n = (int)json_object_array_length(cases);
    for (int i = 0; i < n; i++) failed += check_case(argv[1], json_object_array_get_idx(cases, i)) != 0;
    json_object_put(root);
    printf("rope_llama3: %d configs, %d failed (tolerance %.2g relative)\n", n, failed, TOL);
    return failed ? 1 : 0;
}
