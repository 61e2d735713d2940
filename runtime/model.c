// The model plan's weights: views into the checkpoint, their placement on the backend, and
// the RoPE table. Loading the whole plan is runtime/model_load.c.
#include "runtime/model.h"

#include <math.h>
#include <string.h>


// ---------------------------------------------------------------------------- tensors
int model_find_matrix(const model *m, const char *name, int64_t rows, int64_t cols, weight_t *w,
                      llamoe_err *err) {
    const st_tensor *t;
    int64_t shape[2] = {rows, cols};
    if (st_expect(&m->st, name, 2, shape, &t, err) != 0) return -1;
    *w = (weight_t){.data = t->data, .dtype = t->dtype, .rows = rows, .cols = cols, .ld = cols};
    return 0;
}

weight_t model_place_weight(const model *m, weight_t host) {
    backend *be = m->be;
    if (!be->device_memory) return host;
    // Device copies are packed (ld = cols): one 2-D copy gathers a strided view's rows.
    size_t es = dtype_size(host.dtype), row_bytes = (size_t)host.cols * es;
    uint8_t *dev = be->alloc(be, row_bytes * (size_t)host.rows);
    be->upload_2d(be, dev, host.data, (size_t)host.ld * es, row_bytes, (size_t)host.rows);
    host.data = dev;
    host.ld = host.cols;
    return host;
}

void model_place_gate_up(const model *m, weight_t *gate, weight_t *up) {
    backend *be = m->be;
    if (!be->device_memory) return;
    CHECK(gate->rows == up->rows && gate->cols == up->cols && gate->dtype == up->dtype);
    size_t es = dtype_size(gate->dtype), row_bytes = (size_t)gate->cols * es, bytes = row_bytes * (size_t)gate->rows;
    uint8_t *dev = be->alloc(be, 2 * bytes);
    be->upload_2d(be, dev, gate->data, (size_t)gate->ld * es, row_bytes, (size_t)gate->rows);
    be->upload_2d(be, dev + bytes, up->data, (size_t)up->ld * es, row_bytes, (size_t)up->rows);
    gate->data = dev;
    up->data = dev + bytes;
    gate->ld = gate->cols;
    up->ld = up->cols;
}

// ---------------------------------------------------------------------------- rope
void rope_inv_freq(const llama_config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        if (c->rope_llama3) {
            // Llama 3.1 scaling: long wavelengths are slowed by `factor`, short ones kept,
            // the band between blended smoothly (transformers' _compute_llama3_parameters).
            double low_wavelen = c->rope_original_max_position / c->rope_low_freq_factor;
            double high_wavelen = c->rope_original_max_position / c->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) f = f / c->rope_factor;
            else if (wavelen >= high_wavelen) {
                double smooth = (c->rope_original_max_position / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}

