// check_st_equal DIR_A DIR_B: both model directories load (config + weights), hold the same
// tensor names and shapes, and every tensor widened to float32 is bit-identical. Exit 0 if so,
// 1 with the first difference otherwise. Used by test_mkmodel.sh for F32/BF16 parity.
#include "runtime/config.h"
#include "runtime/safetensors.h"

#include <string.h>

static void load(const char *dir, llama_config *c, st_set *s) {
    llamoe_err err;
    if (config_load(c, dir, &err) != 0) die("%s", err.msg);
    if (st_open_dir(s, dir, &err) != 0) die("%s", err.msg);
}

int main(int argc, char **argv) {
    if (argc != 3) die("usage: check_st_equal DIR_A DIR_B");
    llama_config ca, cb;
    st_set a, b;
    load(argv[1], &ca, &a);
    load(argv[2], &cb, &b);
    // Dtypes may differ; everything else in the config must not.
    if (ca.hidden_size != cb.hidden_size || ca.n_layers != cb.n_layers || ca.vocab_size != cb.vocab_size ||
        ca.n_heads != cb.n_heads || ca.n_kv_heads != cb.n_kv_heads || ca.intermediate_size != cb.intermediate_size ||
        ca.tie_word_embeddings != cb.tie_word_embeddings || ca.rope_llama3 != cb.rope_llama3)
        die("%s and %s: configs differ", argv[1], argv[2]);
    if (a.n_tensors != b.n_tensors) die("%d tensors in %s, %d in %s", a.n_tensors, argv[1], b.n_tensors, argv[2]);
    for (int i = 0; i < a.n_tensors; i++) {
        const st_tensor *x = &a.tensors[i], *y = st_find(&b, x->name);
        if (!y) die("%s: tensor %s missing", argv[2], x->name);
        int same = x->ndim == y->ndim;
        for (int d = 0; same && d < x->ndim; d++) same = x->shape[d] == y->shape[d];
        if (!same) die("tensor %s: shapes differ", x->name);
        size_t n = x->nbytes / dtype_size(x->dtype);
        float *fx = xmalloc(n * sizeof *fx), *fy = xmalloc(n * sizeof *fy);
        to_f32(fx, x->data, x->dtype, n);
        to_f32(fy, y->data, y->dtype, n);
        for (size_t k = 0; k < n; k++)
            if (memcmp(&fx[k], &fy[k], sizeof *fx))
                die("tensor %s: element %zu differs: %.9g (%s) vs %.9g (%s)", x->name, k, fx[k],
                    dtype_name(x->dtype), fy[k], dtype_name(y->dtype));
        free(fx);
        free(fy);
    }
    if (a.n_tensors == 0) die("%s: no tensors", argv[1]);
    printf("check_st_equal: %d tensors bit-identical (%s %d file(s), %s %d file(s))\n", a.n_tensors,
           dtype_name(a.tensors[0].dtype), a.n_files, dtype_name(b.tensors[0].dtype), b.n_files);
    st_close(&a);
    st_close(&b);
    return 0;
}
