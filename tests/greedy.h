// One greedy generation of one prompt on one process, as the model-level tests need it:
// every logits row goes to dump, the generated ids to q (sequence_free it). The run state is
// the caller's, so a test can hook it (ffn_hook) or size it as it likes.
#pragma once
#include "parallel/comm.h"
#include "runtime/generate.h"
#ifdef LLAMOE_CUDA
#include "kernels/cuda/backend_cuda.h"
#include "parallel/comm_cuda.h"
#endif

// A one-process communicator that carries the backend's memory.
static inline comm *self_comm_for(backend *be) {
#ifdef LLAMOE_CUDA
    if (be->device_memory) return comm_device_new(comm_self(), backend_cuda_stream(be));
#endif
    return comm_self();
}

static inline void greedy_generate(const model *m, run_state *rs, const int32_t *prompt, int n_prompt, int max_new,
                                   int step_tokens, FILE *dump, sequence *q) {
    gen_options o = {.max_new = max_new, .temperature = 0, .top_p = 1, .seed = 1, .step_tokens = step_tokens,
                     .dump_logits = dump};
    sequence_init(q, 0, prompt, n_prompt, 0, &o);
    comm *c = self_comm_for(m->be);
    gen_stats gs;
    llamoe_err err;
    if (generate(m, rs, c, q, 1, &o, &gs, &err) != 0) die("%s", err.msg);
    c->free(c);
}
